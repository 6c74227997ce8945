"""Scoring a set of images in batches: the one path behind evaluation and prediction.

Each image's Monte-Carlo noise comes from a key derived from the evaluation seed and a hash
of the image's own bytes, so an image's score is a function of (model, image, seed) alone:
the same in evaluation, in ``predict.py``, in any batch, order or device count.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_qc import metrics
from vae_qc import models
from vae_qc import scores as scores_lib
from vae_qc.data import tiling as tiling_lib
from vae_qc.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """The hashable part of ``config.eval`` that the compiled scoring function depends on."""
  scores: tuple[str, ...] = ('neg_elbo',)
  elbo_samples: int = 128
  log_px_samples: int = 1000
  chunk_size: int = 50
  map_samples: int = 16
  batch_size: int = 250
  seed: int = 0

  @classmethod
  def from_config(cls, eval_cfg) -> 'EvalSettings':
    s = cls(**{f.name: (tuple(eval_cfg[f.name]) if f.name == 'scores' else eval_cfg[f.name])
               for f in dataclasses.fields(cls)})
    for name in ('elbo_samples', 'log_px_samples', 'chunk_size', 'map_samples', 'batch_size'):
      if getattr(s, name) < 1:
        raise ConfigError(f'config.eval.{name} must be >= 1, got {getattr(s, name)}.')
    scores_lib.get(s.scores)
    return s


def image_keys(images: np.ndarray, seed: int) -> jax.Array:
  """One PRNG key per image ``[N]``: fold_in(key(seed), hash(image bytes))."""
  base = jax.random.key(seed)
  hashes = np.array([int.from_bytes(hashlib.blake2b(np.ascontiguousarray(im, np.float32).tobytes(),
                                                    digest_size=4).digest(), 'little') >> 1
                     for im in images], np.uint32)
  return jax.vmap(lambda h: jax.random.fold_in(base, h))(jnp.asarray(hashes))


def check_images(images: np.ndarray, image_shape: tuple[int, ...], what: str = 'images') -> None:
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
    raise DataError(f'{what} have shape {images.shape}; the model needs '
                    f'[N, {", ".join(map(str, image_shape))}].')
  finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
  if not finite.all():
    raise DataError(f'{what}: {int((~finite).sum())} images contain NaN or inf '
                    f'(indices {np.nonzero(~finite)[0][:10].tolist()}); drop or repair them.')


class Scorer:
  """Compiled scores and maps of one model configuration.

  ``scorer.scores(variables, images [N, H, W, C]) -> {name: [N]}`` and
  ``scorer.maps(variables, images) -> {'nll', 'abs_error': [N, H, W],
  'reconstruction': [N, H, W, C]}``.

  ``parallel``: a ``vae_qc.parallel.Parallel``; each batch is then sharded over its mesh
  (every process scores its rows, the results are gathered to every process), padded to a
  multiple of the device count. Per-image keys make the values independent of the device
  and process count. Multi-process: every process must call with the same images.
  """

  def __init__(self, model_cfg: models.ModelConfig, settings: EvalSettings, parallel=None):
    self.model_cfg, self.settings, self.parallel = model_cfg, settings, parallel

    def score_batch(variables, x, key_data):
      fns = models.model_fns(model_cfg, variables)
      keys = jax.random.wrap_key_data(key_data)
      return scores_lib.compute(fns, x, keys, settings.scores, settings)

    def map_batch(variables, x, key_data):
      return scores_lib.pixel_maps(models.model_fns(model_cfg, variables), x,
                                   jax.random.wrap_key_data(key_data), settings.map_samples)

    compile_fn = jax.jit if parallel is None else parallel.jit_batched
    self._score_batch = compile_fn(score_batch)
    self._map_batch = compile_fn(map_batch)

  def _batched(self, fn, variables, images: np.ndarray) -> dict[str, np.ndarray]:
    check_images(images, self.model_cfg.image_shape)
    keys = np.asarray(jax.random.key_data(image_keys(images, self.settings.seed)))  # [N, 2]
    bs = min(self.settings.batch_size, len(images))
    par = self.parallel
    if par is not None:
      bs = par.padded_batch_size(bs)
      variables = par.replicate(variables)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), bs):
      x = images[start:start + bs]
      k = keys[start:start + bs]
      n = len(x)
      if n < bs:  # pad to one compiled shape
        x = np.concatenate([x, np.repeat(x[-1:], bs - n, axis=0)])
        k = np.concatenate([k, np.repeat(k[-1:], bs - n, axis=0)])
      if par is None:
        out = jax.device_get(fn(variables, jnp.asarray(x), jnp.asarray(k)))
      else:
        out = par.to_host(fn(variables, *par.put_batch((x, k))))
      for name, value in out.items():
        parts.setdefault(name, []).append(np.asarray(value)[:n])
    return {name: np.concatenate(v) for name, v in parts.items()}

  def scores(self, variables, images: np.ndarray) -> dict[str, np.ndarray]:
    raw = self._batched(self._score_batch, variables, images)
    return scores_lib.finish(self.settings.scores, images, raw)

  def maps(self, variables, images: np.ndarray) -> dict[str, np.ndarray]:
    return self._batched(self._map_batch, variables, images)


def score_metrics(score_values: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
  """{score: image metrics} for every score, labels 1 = anomalous."""
  return {name: metrics.image_metrics(v, labels) for name, v in score_values.items()}


def score_images(scorer: Scorer, variables, images, tiling: tiling_lib.Tiling = tiling_lib.Tiling(),
                 with_maps: bool = False):
  """Scores (and maps) of images of the model's size, or of any size when tiled.

  Args:
    images: [N, H, W, C] array, or (tiled) a list of [H_i, W_i, C] arrays.

  Returns:
    (scores {name: [N]}, maps {'nll', 'abs_error': [N] maps [H_i, W_i],
    'reconstruction': [N] [H_i, W_i, C]} or None).
  """
  if not tiling.size:
    images = np.asarray(images)
    return scorer.scores(variables, images), (scorer.maps(variables, images) if with_maps else None)
  tiles, layout = tiling.tiles(images)
  tile_scores = scorer.scores(variables, tiles)
  tile_maps = scorer.maps(variables, tiles) if with_maps else None
  scores = {name: np.zeros(len(layout)) for name in tile_scores}
  maps = {name: [] for name in tile_maps} if with_maps else None
  start = 0
  for i, (origins, shape) in enumerate(layout):
    sl = slice(start, start + len(origins))
    start += len(origins)
    for name, v in tile_scores.items():
      scores[name][i] = tiling_lib.aggregate(v[sl], tiling.aggregate, tiling.topk)
    if with_maps:
      for name, m in tile_maps.items():
        if m.ndim == 4:  # reconstruction [T, h, w, C]: stitch per channel
          maps[name].append(np.stack([tiling_lib.stitch(m[sl][..., c], origins, shape)
                                      for c in range(m.shape[-1])], -1))
        else:
          maps[name].append(tiling_lib.stitch(m[sl], origins, shape))
  if with_maps:
    maps = {k: (np.stack(v) if len({a.shape for a in v}) == 1 else v) for k, v in maps.items()}
  return scores, maps
