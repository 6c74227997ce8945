"""Position calibration of the final map: its border made even with its interior.

Near an image's border a map is made from less. The sliding window covers a border pixel with
fewer tiles (a corner with one, an interior pixel with four at a stride of half the tile),
always at a tile's edge, where the model has least context; the Gaussian smoothing mirrors the
map there (mode 'reflect'), so it averages fewer distinct pixels. Good images' maps are then
brighter and noisier near the border, and the largest pixels of a good image, those its image
score averages, lie there: with the recipe's seed-0 test runs, 67%, 72% and 87% of the 100
largest pixels of the good generated, brick and gravel test images lay within 16 px of the
border, which holds 27%, 44% and 44% of their pixels; 53%, 51% and 50% with this calibration
(docs/print_study.md, "A map even up to its border").

``config.eval.map_position = True`` standardises the configured map (``config.eval.map``, the
map of the pixel metrics and of the map scores that read it) in each cell of (distance to the
nearer of the top and bottom borders, distance to the nearer of the left and right borders),
each cut at :data:`EDGES` px, by the mean and sd of good training images' maps in that cell
(:func:`fit`, after training, on the images of the map calibration; kept as
``<run>/map_position.json``), and puts it back in the units of the innermost cell:

    map'_ij = (map_ij − μ_c) / s_c · s_inner + μ_inner,   c = cell(i, j),

so the interior keeps its values and a border pixel counts as much as an interior pixel whose
good value is as unusual. Photos larger than the training images take the innermost cell's
values beyond the last distance the training images reached.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import os
from typing import Any

import numpy as np

from vae_qc import workdir as wd
from vae_qc.errors import VaeQcError

FILE = 'map_position.json'
EDGES = (2, 4, 8, 12, 16, 24, 32)  # distance to the border (px) where the cells are cut
_TINY = 1e-12  # a cell whose good values spread less is left as it is


def cells(height: int, width: int, edges=EDGES) -> tuple[np.ndarray, np.ndarray]:
  """Cell indices (row bin [H, 1], column bin [1, W]) of an image's pixels: the bins of the
  distance to the nearer top/bottom border and to the nearer left/right border."""
  y, x = np.arange(height), np.arange(width)
  by = np.digitize(np.minimum(y, height - 1 - y), edges)
  bx = np.digitize(np.minimum(x, width - 1 - x), edges)
  return by[:, None], bx[None, :]


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare their fields
class Position:
  """Mean and sd [B, B] (B = len(edges) + 1; NaN where no good pixel fell) of good maps per
  cell (row bin, column bin), and the innermost fitted cell ``inner``."""
  edges: tuple[int, ...]
  mean: np.ndarray
  sd: np.ndarray

  @property
  def inner(self) -> tuple[int, int]:
    """The fitted cell farthest from the borders (largest bins)."""
    fitted = np.argwhere(np.isfinite(self.mean))
    return tuple(int(v) for v in fitted[np.argmax(fitted.sum(1))])

  def to_json(self) -> dict[str, Any]:
    as_list = lambda a: [[None if not np.isfinite(v) else float(v) for v in row] for row in a]
    return {'feature': 'distance_to_border_rows_cols', 'edges': list(self.edges),
            'mean': as_list(self.mean), 'sd': as_list(self.sd)}

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> 'Position':
    as_array = lambda a: np.array([[np.nan if v is None else v for v in row] for row in a],
                                  np.float64)
    return cls(tuple(int(e) for e in obj['edges']), as_array(obj['mean']), as_array(obj['sd']))


def fit(maps, edges=EDGES) -> Position:
  """The per-cell mean and sd of good images' maps ([N, H, W] or a list of [H_i, W_i])."""
  n = len(edges) + 1
  total, total_sq, count = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
  for m in maps:
    m = np.asarray(m, np.float64)
    by, bx = cells(*m.shape, edges)
    idx = (by * n + bx).ravel()
    flat = m.ravel()
    count += np.bincount(idx, minlength=n * n).reshape(n, n)
    total += np.bincount(idx, flat, minlength=n * n).reshape(n, n)
    total_sq += np.bincount(idx, flat * flat, minlength=n * n).reshape(n, n)
  if not count.any():
    raise VaeQcError('the position calibration needs at least one good map.')
  with np.errstate(invalid='ignore', divide='ignore'):
    mean = np.where(count > 0, total / count, np.nan)
    sd = np.where(count > 1, np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0)), np.nan)
  mean = np.where(np.isfinite(sd), mean, np.nan)
  return Position(tuple(edges), mean, sd)


def apply(position: Position, amap: np.ndarray) -> np.ndarray:
  """``amap`` [H, W] standardised per cell and put back in the innermost cell's units
  (float32). A cell that no good pixel fell in, or whose good values did not spread, is
  left as it is; bins beyond the training images' reach take the last they reached."""
  amap = np.asarray(amap, np.float64)
  iy, ix = position.inner
  mu_in, sd_in = position.mean[iy, ix], position.sd[iy, ix]
  if not sd_in > _TINY:
    return amap.astype(np.float32)
  by, bx = cells(*amap.shape, position.edges)
  fitted = np.isfinite(position.mean)
  by = np.minimum(by, np.max(np.nonzero(fitted.any(1))[0]))
  bx = np.minimum(bx, np.max(np.nonzero(fitted.any(0))[0]))
  mu, sd = position.mean[by, bx], position.sd[by, bx]
  ok = np.isfinite(sd) & (sd > _TINY)
  scale = np.where(ok, sd_in / np.where(ok, sd, 1.0), 1.0)
  shift = np.where(ok, mu, mu_in)
  return ((amap - shift) * scale + mu_in).astype(np.float32)


class PositionMaps(collections.abc.Mapping):
  """``maps`` (a ``scores.MapForms`` or ``scales.MeanMaps``) with the map ``name``
  position-calibrated (:func:`apply`, computed when first read); every other map as it is."""

  def __init__(self, maps: collections.abc.Mapping, position: Position, name: str):
    self._maps, self._position, self._name = maps, position, name
    self._calibrated = None

  def __getitem__(self, key: str):
    if key != self._name:
      return self._maps[key]
    if self._calibrated is None:
      raw = self._maps[key]
      out = [apply(self._position, m) for m in raw]
      self._calibrated = np.stack(out) if isinstance(raw, np.ndarray) else out
    return self._calibrated

  def __iter__(self):
    return iter(self._maps)

  def __len__(self) -> int:
    return len(self._maps)


def save(directory: str, position: Position) -> None:
  wd.write_json(os.path.join(directory, FILE), position.to_json())


def load(directory: str) -> Position:
  """The run's position calibration; VaeQcError when the run has none."""
  return wd.read_table(
      os.path.join(directory, FILE), Position.from_json,
      'this run scores its map position-calibrated (config.eval.map_position), fitted when the '
      'run is evaluated. Re-run its study (add --allow_config_change to a finished run: it '
      'trains nothing) to fit it.', 'a position calibration')
