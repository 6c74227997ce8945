"""Resumable scoring: every scored batch is kept in ``<workdir>/scores_cache/`` as it is computed.

Scoring the test set at the paper's K (``eval.log_px_samples`` = 1000, or 5000) takes far
longer than training on small studies, and a killed or preempted run would start it again
from nothing. :func:`attach` wraps a :class:`vae_qc.evaluate.Scorer`'s compiled batch
functions (scores and maps) so that each batch's outputs are written, atomically, to
``scores_cache/<kind>-<fingerprint>.npz`` once computed, and read back instead of computed
when the same batch comes again. The batching itself is unchanged, so a resumed pass computes
every batch exactly as an uninterrupted one and gives the same numbers (bitwise on one
machine).

A batch's fingerprint is its kind (scores or maps), its shape and its per-image PRNG keys,
which are derived from the evaluation seed and a hash of each image's pixels
(``evaluate.image_keys``). A cached batch holding a NaN is scored again, never reused. The
further scales of a multi-scale run (``vae_qc.scales``) keep their map batches here too (their
tiles have other shapes, so other fingerprints).
Everything else that changes the numbers is the cache's identity,
``scores_cache/identity.json``: the evaluation settings, the model config, a digest of the
parameters (and the checkpoint step; and of each further scale's model, window and
parameters), a digest of the test images and labels, a digest of
this package's source (``code_digest``: a change to the code that computes the numbers
discards the batches scored before it), and the JAX version and platform. A cache of
another identity is deleted, with a log line naming what changed, and scoring starts afresh.

Between batches a preemption notice (``vae_qc.train.PREEMPTION``) stops scoring with
:class:`vae_qc.errors.Preempted`; the batches scored so far stay in the cache.

Multi-process: every process reads the cache as it was when scoring started (so all agree on
which batches to compute, collectively); only process 0 writes.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

from vae_qc import config as config_lib
from vae_qc import train as train_lib
from vae_qc import workdir as wd
from vae_qc.errors import Preempted

CACHE_DIR = 'scores_cache'
IDENTITY_FILE = 'identity.json'
KINDS = ('scores', 'maps')


def _hash_arrays(arrays) -> str:
  h = hashlib.blake2b(digest_size=16)
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f'{a.dtype.str}{a.shape};'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _has_nan(a: np.ndarray) -> bool:
  return np.issubdtype(a.dtype, np.floating) and bool(np.isnan(a).any())


@functools.cache
def code_digest() -> str:
  """A digest of the ``vae_qc`` package's Python source files (their paths and bytes)."""
  root = os.path.dirname(os.path.abspath(__file__))
  h = hashlib.blake2b(digest_size=16)
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      if name.endswith('.py'):
        path = os.path.join(dirpath, name)
        h.update(os.path.relpath(path, root).encode() + b'\0')
        with open(path, 'rb') as f:
          h.update(f.read())
  return h.hexdigest()


def identity(scorer, variables, test_images, test_labels, step: int | None = None
             ) -> dict[str, Any]:
  """What the cached numbers depend on besides each batch's own images and keys.

  ``variables``: the model's variables on the host; ``test_images``: [N, H, W, C] or a list
  of [H_i, W_i, C] arrays; ``test_labels``: [N].
  """
  leaves = jax.tree_util.tree_leaves(variables)
  images = test_images if isinstance(test_images, (list, tuple)) else [test_images]
  scales = {s.name: {'model': dataclasses.asdict(s.scorer.model_cfg),
                     'tiling': dataclasses.asdict(s.tiling),
                     'params_digest': _hash_arrays(np.asarray(x) for x in
                                                   jax.tree_util.tree_leaves(s.variables))}
            for s in getattr(scorer, 'scales', ())}
  return {
      'eval': dataclasses.asdict(scorer.settings),
      'model': dataclasses.asdict(scorer.model_cfg),
      'checkpoint_step': step,
      'params_digest': _hash_arrays(np.asarray(x) for x in leaves),
      **({'scales': scales} if scales else {}),
      'test_images_digest': _hash_arrays(list(images) + [np.asarray(test_labels)]),
      'n_test': int(len(test_labels)),
      'code_digest': code_digest(),
      'jax': jax.__version__,
      'platform': jax.default_backend(),
  }


class ScoreCache:
  """The batch store of one scoring identity in ``directory``."""

  def __init__(self, directory: str, ident: dict[str, Any], parallel=None):
    self.directory, self.parallel = directory, parallel
    self.is_writer = parallel is None or parallel.is_writer
    self.reused = self.computed = 0
    ident = json.loads(json.dumps(wd._jsonable(ident)))  # pylint: disable=protected-access
    saved = self._read_identity()
    self.files: set[str] = self._batch_files()
    if saved != ident:
      if saved is not None or self.files:
        changed = config_lib.changed_fields(saved or {}, ident, safe=())
        logging.info('Score cache %s was made with other settings (%s): its %d batches are '
                     'discarded and scoring starts afresh.', directory,
                     ', '.join(changed) if saved else 'identity.json missing or unreadable',
                     len(self.files))
      if self.is_writer:
        for name in self.files:  # the batches first: no reader pairs new identity, old data
          os.remove(os.path.join(directory, name))
      self.files = set()
    elif self.files:
      logging.info('Scoring resumes: %d batches scored before are read from %s.',
                   len(self.files), directory)
    if self.is_writer and saved != ident:
      wd.write_json(os.path.join(directory, IDENTITY_FILE), ident)
    if parallel is not None and parallel.process_count > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('vae_qc.score_cache')

  def _read_identity(self) -> dict[str, Any] | None:
    try:
      return wd.read_json(os.path.join(self.directory, IDENTITY_FILE))
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # unreadable: differs from any identity

  def _batch_files(self) -> set[str]:
    try:
      return {n for n in os.listdir(self.directory) if n.endswith('.npz')
              and n.split('-', 1)[0] in KINDS}
    except FileNotFoundError:
      return set()

  def _to_host(self, tree):
    if self.parallel is None:
      return jax.device_get(tree)
    return self.parallel.to_host(tree)

  def _load(self, name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(self.directory, name), allow_pickle=False) as f:
      return {k: f[k] for k in f.files}

  def _store(self, name: str, out: dict[str, np.ndarray]) -> None:
    if self.is_writer:
      wd.write_npz(os.path.join(self.directory, name), out)

  def wrap(self, kind: str, fn: Callable) -> Callable:
    """``fn(variables, x [B, ...], key_data [B, 2]) -> {name: [B, ...]}``, cached by batch;
    returns host (numpy) outputs."""
    def cached(variables, x, key_data):
      keys = np.asarray(self._to_host(key_data))
      name = f'{kind}-{_hash_arrays([np.asarray(x.shape), keys])}.npz'
      out = self._load(name) if name in self.files else None
      if out is not None and not any(_has_nan(v) for v in out.values()):
        self.reused += 1
      else:  # not scored yet, or a NaN batch: never reused (the code may have been mended)
        out = {k: np.asarray(v) for k, v in self._to_host(fn(variables, x, key_data)).items()}
        self._store(name, out)
        self.computed += 1
      if train_lib.PREEMPTION.reached():
        raise Preempted(
            f'preempted by {train_lib.PREEMPTION.describe()} while scoring; the batches '
            f'scored so far ({self.reused + self.computed}) are kept in {self.directory}. '
            'Re-run the same command to resume.')
      return out
    return cached


def release(workdir: str, config, parallel=None) -> None:
  """Deletes ``workdir/scores_cache`` once the run's results are written: it serves a pass that
  was stopped, and a finished run's map batches take about a gigabyte (a generated print run:
  1.4 GB). ``config.eval.keep_score_cache = True`` keeps it, so that the same evaluation
  again reads its batches back. Several processes: all wait here, then process 0 deletes."""
  directory = os.path.join(workdir, CACHE_DIR)
  if config.eval.get('keep_score_cache', False):
    return
  if parallel is not None and parallel.process_count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('vae_qc.score_cache.release')
    if not parallel.is_writer:
      return
  if not os.path.isdir(directory):
    return
  size = sum(e.stat().st_size for e in os.scandir(directory) if e.is_file())
  shutil.rmtree(directory, ignore_errors=True)
  logging.info('Score cache %s deleted (%.0f MB): the results are written '
               '(config.eval.keep_score_cache=True keeps it).', directory, size / 2**20)


def attach(scorer, workdir: str, variables, dataset, config, step: int | None = None
           ) -> ScoreCache | None:
  """Makes ``scorer`` keep its batches in ``workdir/scores_cache`` (``config.eval.cache_scores``,
  default on); returns the cache, or None when off.

  ``variables``: the host variables the scorer will be called with (only these);
  ``dataset``: a ``vae_qc.data.Dataset`` (its test images and labels are part of the
  identity); ``step``: the checkpoint step, recorded in the identity.
  """
  directory = os.path.join(workdir, CACHE_DIR)
  if not config.eval.get('cache_scores', True):
    return None
  ident = identity(scorer, variables, dataset.test_images, dataset.test_labels, step)
  if scorer.parallel is None or scorer.parallel.is_writer:
    os.makedirs(directory, exist_ok=True)
  cache = ScoreCache(directory, ident, scorer.parallel)
  # pylint: disable=protected-access
  scorer._score_batch = cache.wrap('scores', scorer._score_batch)
  scorer._map_batch = cache.wrap('maps', scorer._map_batch)
  for scale in scorer.scales:  # their tiles have other shapes: fingerprints of their own
    scale.scorer._map_batch = cache.wrap('maps', scale.scorer._map_batch)
  return cache

