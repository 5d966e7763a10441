"""The retriever exports that bootstrap and refresh the index (ICT and REALM
pretraining write them; the embedding job embeds them), and what a resumed
run drops of them."""
import concurrent.futures
import os
import shutil

import jax
import jax.numpy as jnp
from absl import logging

from realm_jax.index import export as export_lib
from realm_jax.models.retriever import doc_embedder_params


def export_retriever(config, cfg, state: dict, step: int, keep: int | None = None):
  """Writes the document embedder to <workdir>/exports/<step>/ (process 0),
  keeping the newest `keep` exports."""
  if jax.process_index() == 0:
    _write_export(config.workdir, cfg, doc_embedder_params(
        state["params"]["retriever"], cfg), step, keep)


def drop_after(workdir: str, index_dir: str, step: int):
  """A run resumed at `step` drops the exports and index versions of later
  steps: they came from the killed run's discarded steps, so the resumed run
  would serve an index its own params never made, and keep that export
  instead of writing its own (write_export keeps an existing one)."""
  if jax.process_index() != 0:
    return
  for later in [s for s in export_lib.list_exports(workdir) if s > step]:
    shutil.rmtree(export_lib.export_path(workdir, later))
  if not os.path.isdir(index_dir):
    return
  for name in os.listdir(index_dir):   # versions, and builds not committed
    number = name.removesuffix(".tmp")
    if number.isdigit() and int(number) > step:
      logging.warning("dropping index %s: made after step %d, where this run "
                      "resumes", name, step)
      shutil.rmtree(os.path.join(index_dir, name))


def _write_export(workdir, cfg, params, step, keep):
  if params is None:   # the newest export again (BackgroundExporter.repeat)
    export_lib.copy_export(workdir, export_lib.latest_export(workdir), step)
  else:
    export_lib.write_export(workdir, step, jax.device_get(params), cfg)
  if keep:
    for old in export_lib.list_exports(workdir)[:-keep]:
      shutil.rmtree(export_lib.export_path(workdir, old), ignore_errors=True)


class BackgroundExporter:
  """export_retriever off the training thread.

  The training thread only dispatches an on-device copy of the document
  embedder (the next step donates the state's buffers); a worker thread
  fetches it and writes the export (2.9 s for BERT-base on a CPU host). A
  failed write is raised at the next submit or at close.
  """

  def __init__(self, config, cfg, keep: int | None = None):
    self.config, self.cfg, self.keep = config, cfg, keep
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="export")
    self._pending = []

  def submit(self, state: dict, step: int):
    self._raise_failures()
    # Every process copies (a collective on a multi-host mesh); process 0 writes.
    params = jax.tree.map(jnp.copy, doc_embedder_params(
        state["params"]["retriever"], self.cfg))
    if jax.process_index() == 0:
      self._pending.append(self._pool.submit(
          _write_export, self.config.workdir, self.cfg, params, step, self.keep))

  def repeat(self, step: int):
    """Exports step as a copy of the newest export, after the writes in
    flight (pretrain.export=best_heldout_utility: the newest export holds
    the best retriever so far)."""
    self._raise_failures()
    if jax.process_index() == 0:
      self._pending.append(self._pool.submit(
          _write_export, self.config.workdir, self.cfg, None, step, self.keep))

  def _raise_failures(self):
    done = [f for f in self._pending if f.done()]
    self._pending = [f for f in self._pending if not f.done()]
    for f in done:
      f.result()

  def close(self):
    """Waits for the writes in flight; raises the first failure."""
    self._pool.shutdown(wait=True)
    self._raise_failures()
