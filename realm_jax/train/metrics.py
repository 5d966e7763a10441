"""Training metrics to TensorBoard and to a JSONL file, and PNG plots of them.

`python -m realm_jax.train.metrics <workdir>/metrics.jsonl [--out DIR]` turns
the JSONL into one PNG per metric.
"""
import json
import math
import os
import sys
from typing import Dict, Optional

from tensorboardX import SummaryWriter


class MetricsWriter:
  """Appends one JSON object per logged step; mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, name: str = "train", enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, f"{name}_metrics.jsonl")
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(self.path, "a", encoding="utf-8")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", name))

  def write(self, step: int, metrics: Dict[str, float]):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for k, v in row.items():
      if k != "step" and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()


def read_jsonl(path: str):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_metrics(jsonl_path: str, out_dir: Optional[str] = None,
                 keys=None) -> list:
  """Writes <out_dir>/<metric>.png for each metric; returns the paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_jsonl(jsonl_path)
  out_dir = out_dir or os.path.join(os.path.dirname(jsonl_path), "plots")
  os.makedirs(out_dir, exist_ok=True)
  keys = keys or sorted({k for r in rows for k in r if k != "step"})
  prefix = os.path.basename(jsonl_path).replace("_metrics.jsonl", "")
  paths = []
  for key in keys:
    points = [(r["step"], r[key]) for r in rows if key in r]
    if not points:
      continue
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_title(f"{prefix}: {key}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{prefix}_{key.replace('/', '_')}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def plot_pretraining(workdir: str, out_path: str, k: int = 5) -> str | None:
  """One figure of a REALM pretraining run, the paper's Figure 4 for its
  corpus: the loss and MLM accuracy of the training steps beside held-out
  retrieval utility and masked recall@k at each measure (heldout.py)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train_path = os.path.join(workdir, "pretrain_metrics.jsonl")
  held_path = os.path.join(workdir, "heldout_metrics.jsonl")
  if not (os.path.exists(train_path) and os.path.exists(held_path)):
    return None
  train, held = read_jsonl(train_path), read_jsonl(held_path)
  panels = [("loss", train, "loss"), ("MLM accuracy (training steps)", train,
                                      "mlm_accuracy"),
            ("held-out retrieval utility (nats)", held, "heldout_utility"),
            (f"held-out masked recall@{k}", held, f"heldout_recall@{k}")]
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
  for ax, (title, rows, key) in zip(axes, panels):
    points = [(r["step"], r[key]) for r in rows if key in r]
    if points:
      ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit("usage: python -m realm_jax.train.metrics METRICS.jsonl [--out DIR]")
  out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
  for p in plot_metrics(sys.argv[1], out):
    print(p)
