"""Patch models of several sizes as one detector: each map is the mean of theirs.

A 16-px patch model redraws fine texture that a 32-px one blurs; the 32-px one places a layer
line that a 16-px patch cannot. ``config.data.scales = ((16, 8),)`` trains, beside the main
patch model (``config.data.patch_size``, ``tile_stride``), one more model per entry
``(patch_size, tile_stride)``: the same config otherwise (model, training, seed), on the same
training images. Each trains in ``<workdir>/scale_p<patch_size>/``, a run directory of its own
(config.json, model.json, checkpoints): it resumes like the main model, and
``vae_qc.load_run`` reads it alone.

Scoring (``vae_qc.evaluate.score_images``): every scale's tile maps are stitched with its own
sliding window, and each map the scores and metrics read (the configured ``config.eval.map``,
and any form a map score reads) is the per-pixel mean over the scales of that form, each
formed (smoothed, log ratio to the image's median, ...) from its own scale's map
(:class:`MeanMaps`). The reconstruction and the tile scores (``neg_elbo``, ...) are the main
model's. Evaluation, thresholds and ``predict.py`` all go through that one function, so
predict == evaluate holds for a multi-scale run as for one model. ``experiments/fuse_maps.py``
measures the same mean from separately trained runs.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
import dataclasses
from typing import Any

import ml_collections
import numpy as np

from vae_qc.errors import ConfigError

KEPT_FROM_MAIN = ('reconstruction',)  # maps that are the main model's, never averaged


@dataclasses.dataclass
class Scale:
  """A further patch model of a run: its scorer (``vae_qc.evaluate.Scorer``, the run's
  evaluation settings), its sliding window and its host variables."""
  name: str  # the subdirectory of the run that holds it, e.g. 'scale_p16'
  scorer: Any
  tiling: Any  # vae_qc.data.tiling.Tiling
  variables: Any


def dirname(patch_size: int) -> str:
  return f'scale_p{int(patch_size)}'


def parse(config: ml_collections.ConfigDict) -> tuple[tuple[int, int], ...]:
  """``config.data.scales`` as ((patch_size, tile_stride), ...); ConfigError naming the field
  when an entry is not a pair of positive ints, repeats a patch size, or the main model is
  not a (tiled, global) patch model."""
  raw = tuple(config.data.get('scales', ()) or ())
  if not raw:
    return ()
  main = int(config.data.get('patch_size', 0) or 0)
  if not main or config.model.get('arch', 'global') != 'global':
    raise ConfigError(
        f'config.data.scales={raw} adds patch models beside a patch model: set '
        "config.data.patch_size > 0 and config.model.arch='global', or config.data.scales=().")
  out, seen = [], {main}
  for entry in raw:
    try:
      patch, stride = (int(v) for v in entry)
      ok = patch > 0 and 0 < stride <= patch and (patch, stride) == tuple(entry)
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(
          f'config.data.scales entries are (patch_size, tile_stride) pairs of ints with '
          f'0 < tile_stride <= patch_size, e.g. ((16, 8),); got {entry!r}.')
    if patch in seen:
      raise ConfigError(f'config.data.scales: patch size {patch} is there twice (the main '
                        f'model is {main}); give each scale its own patch size.')
    seen.add(patch)
    out.append((patch, stride))
  return tuple(out)


def scale_config(config: ml_collections.ConfigDict, patch_size: int, tile_stride: int
                 ) -> ml_collections.ConfigDict:
  """The config of one scale's model: the run's, with its patch size and window, no scales."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.data.patch_size = int(patch_size)
  out.data.tile_stride = int(tile_stride)
  out.data.scales = ()
  return out


def mean_of(values: list[Any]):
  """Per-pixel mean of one map of each scale (or run): [N, H, W] arrays, or lists of
  [H_i, W_i] (images of several sizes)."""
  if all(isinstance(v, np.ndarray) for v in values):
    return np.mean(np.stack(values), axis=0)
  return [np.mean(np.stack([np.asarray(v[i]) for v in values]), axis=0)
          for i in range(len(values[0]))]


class MeanMaps(Mapping):
  """The maps of several scales as one: ``maps[name]`` is the mean of ``name`` over the
  scales' maps (each a ``scores.MapForms``, which forms its own smoothed / log-ratio maps),
  computed when first read; :data:`KEPT_FROM_MAIN` are the first (main) scale's."""

  def __init__(self, per_scale: list[Mapping[str, Any]]):
    if not per_scale:
      raise ValueError('MeanMaps needs the maps of one scale at least.')
    self._per_scale = per_scale
    self._cache: dict[str, Any] = {}

  def __getitem__(self, name: str):
    if name not in self._cache:
      if name in KEPT_FROM_MAIN:
        self._cache[name] = self._per_scale[0][name]
      else:
        self._cache[name] = mean_of([m[name] for m in self._per_scale])
    return self._cache[name]

  def __iter__(self) -> Iterator[str]:  # the main model's names (the scales lack its own)
    return iter(self._per_scale[0])

  def __len__(self) -> int:
    return len(self._per_scale[0])
