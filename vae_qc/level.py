"""The global level of an image's residual: an image that is wrong everywhere.

The recipe's map is a log ratio to the image's *own* median residual (``scores.log_ratio``),
so it sees a defect against the rest of its image, whatever the surface's contrast. An image
that is wrong everywhere then has nothing to stand out from: a blank frame, sensor noise, a
negative, a surface turned by 90°, another texture. With the print recipe's validation
models their '*_logratio' image scores ranked such images *below* the good ones (a flat grey
image, uniform noise and, on the brick photo, noise of sd 0.05 at image AUROC ≤ 0.04;
docs/print_study.md, "Images wrong everywhere").

``config.eval.map_level = True`` adds to every '*_logratio' map score the image's *level
excess*: with the level v = log median of the image's smoothed base map (the ``<map>_smooth``
that the log ratio divides by its median; the mean over a run's scales), d = v − μ and the
same two sides as the map, g(d) = max(d, −w·d) (w = ``config.eval.map_low_weight``),

    excess = max(g(d) − τ, 0),

where μ is the mean level of good images and τ the largest g of theirs (:func:`fit`, after
training; kept as ``<run>/map_level.json``). ``config.eval.map_level_images`` says which good
images: 'training' (the default), the training images of the map calibration, or
'held_out', the good images that the threshold holds out of training. A model reconstructs
its own training images better than new good ones (on the generated surfaces the held-out
images' level is 0.1 above), so a level fitted on training images is narrower: it counts
part of a new good image's level as excess, which raises the threshold, and it flags more of
the images changed as a whole (docs/print_study.md, "The level fitted on images held out of
training": a tie on the validation sets, an option). An image whose level lies within the
range of the good images it was fitted on scores as before; beyond it the image score grows
by the e-folds it lies beyond. The map itself is not
changed (the pixel metrics read it as before): the excess is a term of the image score.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from vae_qc import workdir as wd
from vae_qc.errors import ConfigError, VaeQcError

FILE = 'map_level.json'
# the images a level is fitted on (config.eval.map_level_images, Level.source), as the log
# names them
SOURCES = {'training': 'training images', 'held_out': 'good images held out of training'}


def check_source(source: str) -> None:
  if source not in SOURCES:
    raise ConfigError(f'config.eval.map_level_images must be one of {", ".join(SOURCES)}, got '
                      f'{source!r}.')


def image_level(amap: np.ndarray) -> float:
  """log median of a positive map [H, W] (a smoothed residual), finite for a map of zeros
  (floored at float32's smallest normal, as ``scores.log_ratio``'s ratio is)."""
  med = float(np.median(np.asarray(amap, np.float64)))
  return float(np.log(max(med, 0.0) + float(np.finfo(np.float32).tiny)))


def two_sided(d, low_weight: float) -> np.ndarray:
  """g(d) = max(d, −w·d): a level above the good mean counts in full, below it by w."""
  d = np.asarray(d, np.float64)
  return np.maximum(d, -low_weight * d)


@dataclasses.dataclass(frozen=True)
class Level:
  """Good images' mean level μ, the largest two-sided deviation τ among them, the weight w of
  the low side, how many images they were fitted on and which (a key of :data:`SOURCES`)."""
  mean: float
  tolerance: float
  low_weight: float
  n: int
  source: str = 'training'

  def to_json(self) -> dict[str, Any]:
    return {'feature': 'log_median_smoothed_map', **dataclasses.asdict(self)}

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> 'Level':
    return cls(float(obj['mean']), float(obj['tolerance']), float(obj['low_weight']),
               int(obj['n']), str(obj.get('source', 'training')))  # older runs: training


def _levels(maps) -> np.ndarray:
  """[N] :func:`image_level` of each map ([N, H, W] or a list of [H_i, W_i])."""
  return np.array([image_level(m) for m in maps], np.float64)


def fit(maps, low_weight: float, source: str = 'training') -> Level:
  """The level of good images' smoothed maps ([N, H, W] or a list of [H_i, W_i]); ``source``
  says which images they are (a key of :data:`SOURCES`)."""
  check_source(source)
  levels = _levels(maps)
  if not levels.size:
    raise VaeQcError('the level calibration needs at least one good map.')
  mean = float(levels.mean())
  return Level(mean, float(two_sided(levels - mean, low_weight).max()), float(low_weight),
               int(levels.size), source)


def excess(level: Level, maps) -> np.ndarray:
  """[N] the level excess max(g(v − μ) − τ, 0) of each map (float64, ≥ 0)."""
  return np.maximum(two_sided(_levels(maps) - level.mean, level.low_weight) - level.tolerance,
                    0.0)


def save(directory: str, level: Level) -> None:
  wd.write_json(os.path.join(directory, FILE), level.to_json())


def load(directory: str) -> Level:
  """The run's level calibration; VaeQcError when the run has none."""
  return wd.read_table(
      os.path.join(directory, FILE), Level.from_json,
      'this run adds the level excess to its image scores (config.eval.map_level), fitted when '
      'the run is evaluated. Re-run its study (add --allow_config_change to a finished run: it '
      'trains nothing) to fit it.', 'a level calibration')
