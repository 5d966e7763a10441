"""The package's shape, checked from the source: layers, no cycles, no
private imports across modules, no oversized files, no file name twice.

  face       main, tasks/ (the task runners)                (any layer below)
  train, qa  training; inference with a fine-tuned model    (never each other;
                                                             qa may use kb)
  kb         knowledge bases: records, versions, updates
  retrieval  the index and block store a fine-tuned model reads
  weights    where a run's weights start
  index, batching                                           (index and the
                                                             host-side batches)
  models, data                                              (leaves)
  checkpoint, config, errors, integrity, packaged, stats,
  workdir                                                   (shared leaves)
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "realm_jax"
LEAVES = {"checkpoint", "config", "errors", "integrity", "packaged", "stats",
          "workdir"}
FACE = {"main", "tasks"}
# package -> the packages (besides itself and the leaves) it may import.
ALLOWED = {
    "models": set(),
    "data": set(),
    "index": {"models", "data"},
    "batching": {"data"},
    "weights": {"index", "models", "data"},
    "retrieval": {"weights", "index", "models", "data"},
    "kb": {"retrieval", "weights", "index", "models", "data"},
    "train": {"batching", "retrieval", "weights", "index", "models", "data"},
    "qa": {"kb", "batching", "retrieval", "weights", "index", "models", "data"},
    "serve": {"qa", "kb", "batching", "retrieval", "weights", "index", "models",
              "data"},
}
MAX_LINES = 400


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _imports(path: pathlib.Path, modules) -> list[tuple[str, list[str]]]:
  """(imported realm_jax module, names taken from it) of every import in the
  file, including those inside functions."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [(a.name, []) for a in node.names if a.name.startswith("realm_jax")]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
        "realm_jax"):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in modules:                # `from realm_jax.x import module`
          found.append((sub, []))
        else:                             # `from realm_jax.x.module import name`
          found.append((node.module, [alias.name]))
  return found


def _graph():
  modules = _modules()
  return {m: _imports(p, modules) for m, p in modules.items()}, modules


def _group(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "realm_jax"


def test_layers():
  graph, _ = _graph()
  bad = []
  for module, imports in graph.items():
    group = _group(module)
    if group in FACE or group == "realm_jax":
      continue
    allowed = {group} | LEAVES | ALLOWED.get(group, set())
    bad += [f"{module} imports {target}" for target, _ in imports
            if _group(target) not in allowed]
  assert not bad, "\n".join(bad)


def test_inference_needs_nothing_from_train():
  graph, _ = _graph()
  for start in ("realm_jax.tasks.evaluate", "realm_jax.tasks.answer",
                "realm_jax.index.masked_recall", "realm_jax.qa.predictor"):
    seen, todo = set(), [start]
    while todo:
      module = todo.pop()
      if module in seen or module not in graph:
        continue
      seen.add(module)
      todo += [t for t, _ in graph[module]]
    assert not [m for m in seen if _group(m) == "train"], start


def test_no_import_cycles():
  graph, _ = _graph()
  edges = {m: {t for t, _ in imports if t in graph and t != m
               and not m.startswith(t + ".")}  # a package's own __init__
           for m, imports in graph.items()}
  state = {}

  def visit(m, path):
    state[m] = "open"
    for t in edges[m]:
      if state.get(t) == "open":
        pytest.fail("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
      if t not in state:
        visit(t, path + [t])
    state[m] = "done"

  for m in sorted(edges):
    if m not in state:
      visit(m, [m])


def test_no_private_names_across_modules():
  graph, _ = _graph()
  bad = [f"{m} imports {name} from {t}" for m, imports in graph.items()
         for t, names in imports for name in names if name.startswith("_")]
  assert not bad, "\n".join(bad)


def test_no_file_over_400_lines():
  long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, long


def test_no_two_modules_share_a_file_name():
  """A name says which module it is: a task's runner is tasks/pretrain.py,
  its step train/pretrain_step.py (they used to be two pretrain.py)."""
  names = {}
  for p in ROOT.rglob("*.py"):
    if p.name != "__init__.py":
      names.setdefault(p.name, []).append(str(p.relative_to(ROOT)))
  clashes = {n: ps for n, ps in names.items() if len(ps) > 1}
  assert not clashes, clashes
