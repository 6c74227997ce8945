"""Scoring a set of images in batches: the one path behind evaluation and prediction.

Each image's Monte-Carlo noise comes from a key derived from the evaluation seed and a hash
of the image's own pixels (on a 16-bit grid), so an image's score is a function of (model,
image, seed) alone: the same in evaluation, in ``predict.py``, in any batch, order or device
count, and for the same photo read from an 8- or 16-bit, grey or grey-RGB file.
"""
from __future__ import annotations

import collections.abc
from concurrent import futures
import dataclasses
import hashlib
import threading
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae_qc import calibration as calibration_lib
from vae_qc import level as level_lib
from vae_qc import metrics
from vae_qc import models
from vae_qc import position as position_lib
from vae_qc import progress as progress_lib
from vae_qc import projection as projection_lib
from vae_qc import scales as scales_lib
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
  map_antithetic: bool = False  # the map pass's samples in antithetic pairs (scores.pixel_maps)
  batch_size: int = 250
  seed: int = 0
  map: str = 'nll'  # the map scored against masks and summarised by map scores (MAP_NAMES)
  map_sigma: float = 4.0  # Gaussian smoothing of '*_smooth' maps and map scores (px)
  map_topk: int = 100  # pixels averaged by the 'map_topk' scores
  map_low_weight: float = scores_lib.MAP_LOW_WEIGHT  # '*_logratio': weight of the too-likely side
  map_post_sigma: float = 0.0  # '*_logratio': smoothed again after the two sides (px; 0: not)
  map_position: bool = False  # the map standardised per distance to the border (vae_qc.position)
  map_level: bool = False  # '*_logratio' scores: + the image's level excess (vae_qc.level)
  map_level_images: str = 'training'  # ... fitted on these good images (level.SOURCES)
  map_contrast_window: int = 0  # cal_error: also binned by the local contrast (vae_qc.calibration)
  map_residual: str = 'sq_error'  # cal_error: the residual map it divides (calibration.RESIDUALS)
  latent_components: int = 10  # Gaussian mixture over the training codes (latent_nll)
  regret_steps: int = 50  # likelihood regret: Adam steps of the per-image posterior refit
  regret_lr: float = 0.05  # ... and their learning rate
  regret_samples: int = 1  # ... and samples of the refit's ELBO per step
  projection_steps: int = 10  # test-time projection (map 'projection'): tempered gradient steps
  projection_rate: float = 0.5  # ... their size α
  projection_l1: float = 5.0  # ... and λ, nats per unit of grey-level change (vae_qc.projection)

  @property
  def calibrated(self) -> bool:
    """The map needs the map calibration (``vae_qc.calibration``), fitted after training."""
    return scores_lib.base_map(self) in calibration_lib.MAPS

  @property
  def elbo_from_maps(self) -> bool:
    """The map pass gives the only tile score, neg_elbo: its samples are the ELBO estimate's
    (the same per-image keys, K = map_samples = elbo_samples), so Σ_pixels nll + KL is that
    estimate's negative (scores.pixel_maps), and a scorer needs no second pass over its
    images (:meth:`Scorer.maps_and_scores`; not for an inpainting model, whose maps are not
    of one encoder pass)."""
    tile_scores = tuple(s.name for s in scores_lib.get(self.scores) if s.map_fn is None)
    return tile_scores == ('neg_elbo',) and self.elbo_samples == self.map_samples

  def one_pass(self, model_cfg) -> bool:
    """Whether a :class:`Scorer` of ``model_cfg`` takes the tile scores from its map pass
    (:attr:`elbo_from_maps`, and not an inpainting model)."""
    return self.elbo_from_maps and not model_cfg.inpaint

  @property
  def fitted_tables(self) -> bool:
    """The map needs tables fitted after training: its calibration, its position table or
    its level."""
    return self.calibrated or self.map_position or self.uses_level

  @property
  def uses_level(self) -> bool:
    """``map_level`` and a '*_logratio' map score to add the level excess to (such a score
    needs a positive map, ``scores.check_map_scores``, whose smoothed form the level reads)."""
    return self.map_level and any(s.map_form == 'logratio' for s in scores_lib.get(self.scores))

  @classmethod
  def from_config(cls, eval_cfg) -> 'EvalSettings':
    # Fields a config does not have (older runs, studies without maps) keep their defaults.
    s = cls(**{f.name: (tuple(eval_cfg[f.name]) if f.name == 'scores' else eval_cfg[f.name])
               for f in dataclasses.fields(cls) if f.name in eval_cfg})
    for name in ('elbo_samples', 'log_px_samples', 'chunk_size', 'map_samples', 'batch_size',
                 'map_topk', 'latent_components', 'regret_steps', 'regret_samples'):
      if getattr(s, name) < 1:
        raise ConfigError(f'config.eval.{name} must be >= 1, got {getattr(s, name)}.')
    if s.map not in scores_lib.MAP_NAMES:
      raise ConfigError(f'config.eval.map must be one of {", ".join(scores_lib.MAP_NAMES)}, '
                        f'got {s.map!r}.')
    scores_lib.check_sigma(s.map_sigma)
    scores_lib.check_low_weight(s.map_low_weight)
    scores_lib.check_post_sigma(s.map_post_sigma)
    calibration_lib.check_window(s.map_contrast_window)
    calibration_lib.check_residual(s.map_residual)
    level_lib.check_source(s.map_level_images)
    scores_lib.check_map_scores(s.scores, s.map)
    if not s.regret_lr > 0:
      raise ConfigError(f'config.eval.regret_lr must be > 0, got {s.regret_lr}.')
    projection_lib.check_settings(s.projection_steps, s.projection_rate, s.projection_l1)
    scores_lib.get(s.scores)
    return s


def image_keys(images: np.ndarray, seed: int) -> jax.Array:
  """One PRNG key per image ``[N]``: fold_in(key(seed), hash(image's pixels on a 1/65535 grid)).

  The hash reads the pixels rounded to 16-bit levels, so the same photo read by another path
  (an 8-bit or a 16-bit file, grey or a grey RGB file converted to luminance, whose floats
  differ in the last bit) draws the same noise and scores the same."""
  base = jax.random.key(seed)
  hashes = np.array([int.from_bytes(hashlib.blake2b(_levels(im).tobytes(), digest_size=4).digest(),
                                    'little') >> 1 for im in images], np.uint32)
  return jax.vmap(lambda h: jax.random.fold_in(base, h))(jnp.asarray(hashes))


def _levels(image: np.ndarray) -> np.ndarray:
  """``image`` (any shape, floats) as int64 multiples of 1/65535, non-finite values as 0."""
  x = np.nan_to_num(np.asarray(image, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
  return np.ascontiguousarray(np.round(x * 65535.0).astype(np.int64))


def check_images(images: np.ndarray, image_shape: tuple[int, ...], what: str = 'images',
                 model_cfg: models.ModelConfig | None = None) -> None:
  """Raises DataError unless ``images`` are [N, *image_shape] (or, given ``model_cfg``, any
  shape it takes: see ``ModelConfig.for_shape``) and finite."""
  if model_cfg is not None and images.ndim == 4:
    model_cfg.for_shape(images.shape[1:])
  elif images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
    raise DataError(f'{what} have shape {images.shape}; the model needs '
                    f'[N, {", ".join(map(str, image_shape))}].')
  finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
  if not finite.all():
    raise DataError(f'{what}: {int((~finite).sum())} images contain NaN or inf '
                    f'(indices {np.nonzero(~finite)[0][:10].tolist()}); drop or repair them.')


# Pixels per scoring batch at most (images of 1024×1024: 2 per batch).
MAX_BATCH_PIXELS = 2 ** 21
# score_images with maps: chunks of about this many pixels, WORKERS of them at a time, so that
# one chunk's host work overlaps another's model passes (eight 1024² photos on 2 cores, the
# print recipe's fast setting: 0.59-0.62 -> 0.68-0.78 images/s; 3 workers scored as 2;
# README, Performance)
CHUNK_PIXELS = 2 ** 20
WORKERS = 2
_CHUNK = threading.local()  # .active: this thread scores a chunk (full batches, no lines)
_NEG_ELBO = 'neg_elbo'  # the map pass's [B] −ELBO when a Scorer's elbo_from_maps


class Scorer:
  """Compiled scores and maps of one model configuration.

  ``scorer.scores(variables, images [N, H, W, C]) -> {name: [N]}`` and
  ``scorer.maps(variables, images) -> {'nll', 'abs_error', 'sq_error', 'z_error': [N, H, W],
  'reconstruction': [N, H, W, C]}``.

  ``parallel``: a ``vae_qc.parallel.Parallel``; each batch is then sharded over its mesh
  (every process scores its rows, the results are gathered to every process), padded to a
  multiple of the device count. Per-image keys make the values independent of the device
  and process count. Multi-process: every process must call with the same images.

  ``scales``: the run's further patch models (``vae_qc.scales.Scale``, config.data.scales);
  :func:`score_images` then averages each map over them and this model.

  ``calibration``: the model's ``vae_qc.calibration.Calibration`` (set by
  :func:`fit_calibration`, or read from the run by ``predict``), from which
  :func:`score_images` adds the map ``cal_error``; None: no such map.

  ``position``: the run's ``vae_qc.position.Position`` (set by :func:`fit_position` or read by
  ``predict``) when ``settings.map_position``; :func:`score_images` then position-calibrates
  the configured map.

  ``level``: the run's ``vae_qc.level.Level`` (set by :func:`fit_level` or read by
  ``predict``) when ``settings.uses_level``; :func:`score_images` then adds each image's
  level excess to its '*_logratio' map scores.
  """

  def __init__(self, model_cfg: models.ModelConfig, settings: EvalSettings, parallel=None,
               scales=()):
    self.model_cfg, self.settings, self.parallel = model_cfg, settings, parallel
    self.scales = tuple(scales)
    self.calibration: calibration_lib.Calibration | None = None
    self.position: position_lib.Position | None = None
    self.level: level_lib.Level | None = None

    # A spatial model takes any image size divisible by its reduction: one trace per size.
    def score_batch(variables, x, key_data):
      fns = models.model_fns(model_cfg.for_shape(x.shape[1:]), variables)
      keys = jax.random.wrap_key_data(key_data)
      return scores_lib.compute(fns, x, keys, settings.scores, settings)

    # The projection map costs projection_steps gradient steps: made only when it is the map.
    projection = (dict(steps=settings.projection_steps, rate=settings.projection_rate,
                       l1_weight=settings.projection_l1)
                  if scores_lib.base_map_of(settings.map) == 'projection' else None)

    if model_cfg.inpaint and projection is not None:
      raise ConfigError('the projection map is not made for a model trained with '
                        'config.model.inpaint; choose another config.eval.map.')

    self.elbo_from_maps = settings.one_pass(model_cfg)

    def map_batch(variables, x, key_data):
      fns = models.model_fns(model_cfg.for_shape(x.shape[1:]), variables)
      keys = jax.random.wrap_key_data(key_data)
      if model_cfg.inpaint:
        return scores_lib.inpaint_maps(fns, x, keys, settings.map_samples, model_cfg.inpaint,
                                       settings.map_antithetic)
      out = scores_lib.pixel_maps(fns, x, keys, settings.map_samples, projection,
                                  with_kl=self.elbo_from_maps,
                                  antithetic=settings.map_antithetic)
      if self.elbo_from_maps:
        out[_NEG_ELBO] = jnp.sum(out['nll'], axis=(1, 2)) + out.pop('kl')
      return out

    compile_fn = jax.jit if parallel is None else parallel.jit_batched
    self._score_batch = compile_fn(score_batch)
    self._map_batch = compile_fn(map_batch)

  def _batched(self, fn, variables, images: np.ndarray, what: str = 'scoring'
               ) -> dict[str, np.ndarray]:
    check_images(images, self.model_cfg.image_shape, model_cfg=self.model_cfg)
    keys = np.asarray(jax.random.key_data(image_keys(images, self.settings.seed)))  # [N, 2]
    # Large images (a spatial model scores whole photos): fewer per batch, memory ~ pixels.
    # Fewer images than a batch: a batch of as many, except in a chunk of score_images, whose
    # batches are full as those of one pass over all its images are (the same compiled
    # shape, so the same rounding).
    full = batch_size_for(self.settings, images.shape[1:3])
    chunk = getattr(_CHUNK, 'active', False)
    bs = full if chunk else min(full, len(images))
    par = self.parallel
    if par is not None:
      bs = par.padded_batch_size(bs)
      variables = par.replicate(variables)
    parts: dict[str, list[np.ndarray]] = {}
    progress = progress_lib.Progress(len(images), what, enabled=False if chunk else None)
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
      progress.update(n)
    progress.finish()
    return {name: np.concatenate(v) for name, v in parts.items()}

  def scores(self, variables, images: np.ndarray) -> dict[str, np.ndarray]:
    raw = self._batched(self._score_batch, variables, images)
    return scores_lib.finish(self.settings.scores, images, raw)

  def maps(self, variables, images: np.ndarray) -> dict[str, np.ndarray]:
    out = self._batched(self._map_batch, variables, images, 'maps')
    out.pop(_NEG_ELBO, None)
    return out

  def maps_and_scores(self, variables, images: np.ndarray, need_maps: bool = True
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(:meth:`scores`, :meth:`maps` or None) of ``images``: one pass over them where the
    map pass gives the scores too (``elbo_from_maps``), else one for each."""
    if not need_maps:
      return self.scores(variables, images), None
    if not self.elbo_from_maps:
      return self.scores(variables, images), self.maps(variables, images)
    maps = self._batched(self._map_batch, variables, images, 'scoring+maps')
    raw = {'neg_elbo': maps.pop(_NEG_ELBO)}
    return scores_lib.finish(self.settings.scores, images, raw), maps


def score_metrics(score_values: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
  """{score: image metrics} for every score, labels 1 = anomalous."""
  return {name: metrics.image_metrics(v, labels) for name, v in score_values.items()}


def check_min_size(images, patch: int) -> None:
  """DataError if an image [H, W, C] of ``images`` is smaller than ``patch`` (0: no check)."""
  if not patch:
    return
  shapes = [np.shape(im) for im in images]
  small = [i for i, sh in enumerate(shapes) if len(sh) != 3 or min(sh[:2]) < patch]
  if small:
    h, w = shapes[small[0]][:2]
    raise DataError(f'{len(small)} image(s) (the first {w}x{h}) are smaller than the '
                    f'{patch}x{patch} patches the model was trained on; use larger photos, or a '
                    'run trained with a smaller config.data.patch_size.')


def _pad_to_multiple(image: np.ndarray, f: int) -> np.ndarray:
  """[H, W, C] mirrored at the bottom and right up to the next multiples of f."""
  h, w, _ = image.shape
  return np.pad(image, ((0, -h % f), (0, -w % f), (0, 0)), mode='reflect')


def _score_whole(scorer: Scorer, variables, images, with_maps: bool):
  """A spatial model scores each image whole, any size: images are mirrored up to multiples of
  its reduction f (the maps are cropped back), and images of one size are batched together."""
  cfg = scorer.model_cfg
  check_min_size(images, cfg.image_shape[0])
  shapes = [np.shape(im) for im in images]
  values: dict[str, np.ndarray] = {}
  maps: dict[str, list] | None = {} if with_maps else None
  for shape in sorted(set(shapes)):
    idx = [i for i, sh in enumerate(shapes) if sh == shape]
    x = np.stack([_pad_to_multiple(np.asarray(images[i]), cfg.reduction) for i in idx])
    group_scores, group_maps = scorer.maps_and_scores(variables, x, with_maps)
    for name, v in group_scores.items():
      values.setdefault(name, np.zeros(len(images), v.dtype))[idx] = v
    if with_maps:
      h, w = shape[:2]
      for name, m in group_maps.items():
        dest = maps.setdefault(name, [None] * len(images))
        for j, i in enumerate(idx):
          dest[i] = m[j, :h, :w]
  if with_maps:
    maps = {k: (np.stack(v) if len(set(shapes)) == 1 else v) for k, v in maps.items()}
  return values, maps


def score_images(scorer: Scorer, variables, images, tiling: tiling_lib.Tiling = tiling_lib.Tiling(),
                 with_maps: bool = False, keep_maps: Sequence[str] | None = None):
  """Scores (and maps) of images of the model's size, or of any size when tiled or when the
  model is spatial (fully convolutional).

  Map scores (``map_max``, ...) are computed from each image's whole map, after stitching.
  With ``scorer.scales`` (a multi-scale run, ``vae_qc.scales``) every map but the
  reconstruction is the mean of that map over the main model and the scales, each on its
  own sliding window; the tile scores are the main model's.

  Where a tiled model's maps are made, images of more than :data:`CHUNK_PIXELS` pixels in all
  are scored in chunks of about that many, :data:`WORKERS` chunks at a time (in one process):
  one chunk's host work (stitching, calibration, smoothing, map scores) runs while another's
  model passes run. Every value is the same as in one pass, bit for bit: an image's keys are
  its own (``image_keys``) and a chunk's batches have the compiled shape of one pass's
  (chunks are used only where one pass fills its batches, :func:`_chunks_score_alike`).

  Args:
    images: [N, H, W, C] array, or (tiled, spatial) a list of [H_i, W_i, C] arrays.
    with_maps: return the maps as well.
    keep_maps: with ``with_maps``, the names of the maps to return (read as each chunk of
      images is done; the chunk's other maps are freed then). None: every map. A study keeps
      the maps it reads, as every map of every image (each model's base maps, their forms
      and the scales' mean) takes ~140 MB per megapixel of photo.

  Returns:
    (scores {name: [N]}, maps {'nll', 'abs_error', 'sq_error', 'z_error' (and 'cal_error'
    when the scorer holds a calibration) and their '_smooth',
    '_excess' (and, for the last three, '_logratio') forms: [N] maps [H_i, W_i],
    'reconstruction': [N] [H_i, W_i, C]} or None; a Mapping whose derived forms are
    computed when first read; only ``keep_maps`` when given).
  """
  settings = scorer.settings
  need_maps = with_maps or bool(scores_lib.map_score_names(settings.scores))
  if need_maps and settings.calibrated:
    for s in _scorers(scorer):
      if s.calibration is None:
        raise ConfigError(f"config.eval.map={settings.map!r} needs the run's map calibration "
                          '(vae_qc.calibration), fitted after training; evaluate the run '
                          'with its study or load it with vae_qc.load_run / predict.py.')
  if need_maps and settings.map_position and scorer.position is None:
    raise ConfigError("config.eval.map_position needs the run's position calibration "
                      '(vae_qc.position), fitted after training; evaluate the run with its '
                      'study or load it with vae_qc.load_run / predict.py.')
  if need_maps and settings.uses_level and scorer.level is None:
    raise ConfigError("config.eval.map_level needs the run's level calibration "
                      '(vae_qc.level), fitted after training; evaluate the run with its '
                      'study or load it with vae_qc.load_run / predict.py.')
  chunks = (_chunks(images) if need_maps and _chunks_score_alike(scorer, images, tiling)
            else [slice(None)])
  if len(chunks) == 1:
    return _score_chunk(scorer, variables, images, tiling, need_maps, with_maps, keep_maps)
  progress = progress_lib.Progress(len(images), 'scoring+maps')

  def one(chunk):
    _CHUNK.active = True  # full batches; they log nothing: this Progress counts the images
    try:
      return _score_chunk(scorer, variables, images[chunk], tiling, need_maps, with_maps,
                          keep_maps)
    finally:
      _CHUNK.active = False

  parts = []
  with futures.ThreadPoolExecutor(WORKERS, thread_name_prefix='score') as pool:
    for chunk, part in zip(chunks, pool.map(one, chunks)):  # in order, as each is done
      parts.append(part)
      progress.update(chunk.stop - chunk.start)
  progress.finish()
  scores = {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]}
  return scores, (ConcatMaps([p[1] for p in parts]) if with_maps else None)


def batch_size_for(settings: EvalSettings, shape) -> int:
  """Images per compiled batch for inputs of ``shape`` (H, W): ``settings.batch_size``, fewer
  for large ones (memory ~ pixels, :data:`MAX_BATCH_PIXELS`)."""
  return min(settings.batch_size, max(1, MAX_BATCH_PIXELS // int(np.prod(shape))))


def _chunks_score_alike(scorer: Scorer, images, tiling: tiling_lib.Tiling) -> bool:
  """Whether chunks of ``images`` would score exactly as one pass: one process (every
  process runs the same batches in the same order), a tiled model, and enough tiles for full
  batches of every model of the scorer in one pass (a chunk's batches are full)."""
  if jax.process_count() != 1 or scorer.model_cfg.arch == 'spatial' or not tiling.size:
    return False
  for s, t in [(scorer, tiling)] + [(sc.scorer, sc.tiling) for sc in scorer.scales]:
    tiles = sum(tiling_lib.num_tiles(*np.shape(im)[:2], t.size, t.stride) for im in images
                if min(np.shape(im)[:2]) >= t.size)
    if tiles < batch_size_for(s.settings, (t.size, t.size)):
      return False
  return True


def _chunks(images) -> list[slice]:
  """Consecutive slices of ``images`` of about :data:`CHUNK_PIXELS` pixels each (at least one
  image)."""
  out, start, pixels = [], 0, 0
  for i, image in enumerate(images):
    pixels += int(np.prod(np.shape(image)[:2]))
    if pixels >= CHUNK_PIXELS or i == len(images) - 1:
      out.append(slice(start, i + 1))
      start, pixels = i + 1, 0
  return out or [slice(None)]


def _score_chunk(scorer: Scorer, variables, images, tiling: tiling_lib.Tiling, need_maps: bool,
                 with_maps: bool, keep_maps: Sequence[str] | None = None):
  """:func:`score_images` of one chunk of images, in one thread."""
  settings = scorer.settings
  if scorer.model_cfg.arch == 'spatial':
    scores, maps = _score_whole(scorer, variables, images, need_maps)
  elif not tiling.size:
    scores, maps = scorer.maps_and_scores(variables, np.asarray(images), need_maps)
  else:
    scores, maps = _score_tiled(scorer, variables, images, tiling, need_maps)
  if maps is not None:
    maps = _final_maps(scorer, [_forms(scorer, maps)] + [
        _forms(scale.scorer, _scale_maps(scale, images), drop=scales_lib.KEPT_FROM_MAIN)
        for scale in scorer.scales])
    scores.update(scores_lib.map_values(settings.scores, maps, settings))
    if scorer.level is not None:
      extra = level_excess(scorer, maps)
      for s in scores_lib.get(settings.scores):
        if s.map_form == 'logratio':
          scores[s.name] = scores[s.name] + extra
    scores = {name: scores[name] for name in settings.scores}  # the configured order
  if maps is not None and with_maps and keep_maps is not None:
    maps = {name: maps[name] for name in keep_maps}  # the rest freed with the chunk
  return scores, (maps if with_maps else None)


class ConcatMaps(collections.abc.Mapping):
  """The maps of consecutive chunks of images as one: ``maps[name]`` is the chunks' ``name``
  maps one after the other, an [N, ...] array when every chunk's is an array of one shape,
  else a list, joined when first read (as ``scales.MeanMaps``); each chunk derives its own
  forms."""

  def __init__(self, parts: list[Mapping[str, Any]]):
    self._parts = parts
    self._cache: dict[str, Any] = {}

  def __getitem__(self, name: str):
    if name not in self._cache:
      values = [p[name] for p in self._parts]
      if (all(isinstance(v, np.ndarray) for v in values)
          and len({v.shape[1:] for v in values}) == 1):
        self._cache[name] = np.concatenate(values)
      else:
        self._cache[name] = [m for v in values for m in v]
    return self._cache[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._parts[0])

  def __len__(self) -> int:
    return len(self._parts[0])


def _forms(scorer: Scorer, maps, drop: tuple[str, ...] = ()):
  """One model's own stitched ``maps`` with its calibrated map added (when the scorer holds a
  calibration), less the maps in ``drop``, and every map's smoothed and log-ratio forms
  (``scores.MapForms``, derived when read)."""
  settings = scorer.settings
  if scorer.calibration is not None:
    maps = calibration_lib.with_map(maps, scorer.calibration,
                                    calibration_lib.map_name(scores_lib.base_map(settings)))
  maps = {k: v for k, v in maps.items() if k not in drop}
  return scores_lib.add_smoothed_maps(maps, settings.map_sigma, settings.map_low_weight,
                                      settings.map_post_sigma)


def _final_maps(scorer: Scorer, forms: list):
  """The maps :func:`score_images` returns, from the :func:`_forms` of the model and of each
  of its scales (the model's first): their mean over the scales, and the configured map
  position-calibrated when the scorer holds a position calibration."""
  maps = scales_lib.MeanMaps(forms) if len(forms) > 1 else forms[0]
  if scorer.position is not None:
    maps = position_lib.PositionMaps(maps, scorer.position, scorer.settings.map)
  return maps


def _stitched(tile_maps: dict[str, np.ndarray], layout) -> dict[str, Any]:
  """Tile maps {name: [T, h, w] or [T, h, w, C]} stitched into each image's map: [N, H, W]
  (or [N, H, W, C]) when the images share a size, else a list."""
  maps = {name: [] for name in tile_maps}
  start = 0
  for origins, shape in layout:
    sl = slice(start, start + len(origins))
    start += len(origins)
    stitchers = {}  # one per tile size: the index and the counts are shared by the maps
    for name, m in tile_maps.items():
      tile_shape = m.shape[1:3]
      if tile_shape not in stitchers:
        stitchers[tile_shape] = tiling_lib.Stitcher(origins, shape, tile_shape)
      stitch = stitchers[tile_shape]
      if m.ndim == 4:  # reconstruction [T, h, w, C]: stitch per channel
        maps[name].append(np.stack([stitch(m[sl][..., c]) for c in range(m.shape[-1])], -1))
      else:
        maps[name].append(stitch(m[sl]))
  return {k: (np.stack(v) if len({a.shape for a in v}) == 1 else v) for k, v in maps.items()}


def _score_tiled(scorer: Scorer, variables, images, tiling: tiling_lib.Tiling,
                 with_maps: bool):
  """Tile scores aggregated per image (``tiling.aggregate``), tile maps stitched back."""
  check_min_size(images, tiling.size)
  tiles, layout = tiling.tiles(images)
  tile_scores, tile_maps = scorer.maps_and_scores(variables, tiles, with_maps)
  scores = {name: np.zeros(len(layout)) for name in tile_scores}
  start = 0
  for i, (origins, _) in enumerate(layout):
    sl = slice(start, start + len(origins))
    start += len(origins)
    for name, v in tile_scores.items():
      scores[name][i] = tiling_lib.aggregate(v[sl], tiling.aggregate, tiling.topk)
  return scores, (_stitched(tile_maps, layout) if with_maps else None)


def _scorers(scorer: Scorer) -> tuple[Scorer, ...]:
  """The scorer and those of its further scales, the main model's first."""
  return (scorer,) + tuple(scale.scorer for scale in scorer.scales)


def _tiled_maps(scorer: Scorer, variables, images, tiling: tiling_lib.Tiling,
                skip: tuple[str, ...] = ()) -> dict[str, Any]:
  """The maps of ``images`` by ``tiling``'s sliding window, stitched, but those in ``skip``."""
  check_min_size(images, tiling.size)
  tiles, layout = tiling.tiles(images)
  return _stitched({k: v for k, v in scorer.maps(variables, tiles).items() if k not in skip},
                   layout)


def _scale_maps(scale, images) -> dict[str, Any]:
  """The stitched maps of one further scale (``vae_qc.scales.Scale``) of a multi-scale run;
  its reconstruction only when its calibration needs it (the main model's is kept)."""
  skip = scales_lib.KEPT_FROM_MAIN if scale.scorer.calibration is None else ()
  return _tiled_maps(scale.scorer, scale.variables, images, scale.tiling, skip=skip)


def _model_maps(scorer: Scorer, variables, images, tiling: tiling_lib.Tiling) -> dict[str, Any]:
  """The model's own maps of ``images`` (stitched, or whole), without map scores."""
  if scorer.model_cfg.arch == 'spatial':
    return _score_whole(scorer, variables, images, True)[1]
  if not tiling.size:
    return scorer.maps(variables, np.asarray(images))
  return _tiled_maps(scorer, variables, images, tiling)


def fit_maps(scorer: Scorer, variables, images, tiling: tiling_lib.Tiling) -> list[dict]:
  """The own stitched maps of good ``images`` by the scorer's model and each of its scales
  (the main model's first): what :func:`fit_calibration` and :func:`fit_position` fit on."""
  maps = [_model_maps(scorer, variables, images, tiling)]
  return maps + [_tiled_maps(s.scorer, s.variables, images, s.tiling) for s in scorer.scales]


def fit_calibration(scorer: Scorer, maps: list[dict]) -> list[calibration_lib.Calibration]:
  """Fits the map calibration (``vae_qc.calibration``) of the scorer's model and of each of
  its scales on the maps of good images (:func:`fit_maps`) and sets it on each scorer, so
  that :func:`score_images` adds ``cal_error``; returns them, the main model's first."""
  window, residual = scorer.settings.map_contrast_window, scorer.settings.map_residual
  out = [calibration_lib.fit(m[residual], m['reconstruction'], window=window, residual=residual)
         for m in maps]
  for s, cal in zip(_scorers(scorer), out):
    s.calibration = cal
  return out


def _level_map(settings: EvalSettings) -> str:
  """The map whose level ``vae_qc.level`` reads: the smoothed base map of the log ratio."""
  return scores_lib.base_map(settings) + '_smooth'


def level_excess(scorer: Scorer, maps) -> np.ndarray:
  """[N] the level excess (``vae_qc.level``) of the images of ``maps`` (what
  :func:`score_images` returns) by the scorer's level; zeros where it holds none."""
  smooth = maps[_level_map(scorer.settings)]
  if scorer.level is None:
    return np.zeros(len(smooth))
  return level_lib.excess(scorer.level, smooth)


def _good_forms(scorer: Scorer, maps: list[dict]) -> list:
  """The :func:`_forms` of good images' maps (:func:`fit_maps`): the model's, then each
  scale's."""
  return [_forms(scorer, maps[0])] + [
      _forms(s.scorer, m, drop=scales_lib.KEPT_FROM_MAIN) for s, m in zip(scorer.scales, maps[1:])]


def fit_level(scorer: Scorer, maps: list[dict], source: str = 'training'
              ) -> list[level_lib.Level]:
  """Fits the level calibration (``vae_qc.level``) on the maps of good images
  (:func:`fit_maps`; after :func:`fit_calibration` when the map is calibrated; ``source``:
  which images, a key of ``level.SOURCES``) and sets it on the scorer: that of the run's
  smoothed map (the mean over its scales), then one for each scale's own (a scale is a run
  of its own); returns them, the run's first."""
  settings = scorer.settings
  forms = _good_forms(scorer, maps)
  name = _level_map(settings)
  means = scales_lib.MeanMaps(forms) if len(forms) > 1 else forms[0]
  out = [level_lib.fit(f[name], settings.map_low_weight, source) for f in [means] + forms[1:]]
  for s, level in zip(_scorers(scorer), out):
    s.level = level
  return out


def fit_position(scorer: Scorer, maps: list[dict]) -> list[position_lib.Position]:
  """Fits the position calibration (``vae_qc.position``) of the configured map on the maps
  of good images (:func:`fit_maps`; after :func:`fit_calibration` when the map is
  calibrated) and sets it on the scorer: that of the run's map (the mean over its scales),
  then one for each scale's own map (a scale is a run of its own); returns them."""
  scorer.position = None
  for s in scorer.scales:
    s.scorer.position = None
  forms = _good_forms(scorer, maps)
  name = scorer.settings.map
  out = [position_lib.fit(_final_maps(scorer, forms)[name])]
  out += [position_lib.fit(f[name]) for f in forms[1:]]  # each scale's own map, formed once
  for s, pos in zip(_scorers(scorer), out):
    s.position = pos
  return out
