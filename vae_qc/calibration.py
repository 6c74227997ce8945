"""The calibrated residual map ``cal_error``: a pixel's squared residual over the residual that
good images leave where their reconstruction looks alike.

With a fixed σ the map ``sq_error`` = E_q (x − E[x|z])² of a good image is far from uniform. It
is largest where the reconstruction has edges: a layer line or a mortar joint that the code
places a fraction of a pixel off leaves a squared error of about |∇x̂|² times the offset², tens
of times the level of a flat region. A defect must then stand above every good edge of the
image. ``cal_error`` divides it by what good images leave at such an edge:

    cal_error(x)_ij = sq_error_ij / E_good[sq_error | g_ij],  g = |∇ E[x|z]| (Sobel),

E_good[sq_error | g] being the mean squared residual of the pixels of good training images
whose reconstruction has a gradient magnitude in the same one of :data:`NUM_BINS` quantile
bins (:func:`fit`, after training, on at most :data:`MAX_FIT_IMAGES` training images; kept as
``<run>/map_calibration.json``, one per scale of a multi-scale run). It is the residual in units
of a Gaussian whose variance depends only on the reconstruction's local slope. A decoder that
predicts σ per pixel (``gaussian_hetero``, ``z_error``) may raise σ inside a defect and so
explain it away; here σ follows the reconstruction, which redraws a defect as good surface.

``config.eval.map = 'cal_error_logratio'`` scores the smoothed two-sided log ratio of this map
(``vae_qc.scores.log_ratio``), as the recipe's ``sq_error_logratio`` does of ``sq_error``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import scipy.ndimage

from vae_qc import workdir as wd

FILE = 'map_calibration.json'
MAP = 'cal_error'
SELF_MAP = 'selfcal_error'
MAPS = (MAP, SELF_MAP)  # the maps that need a calibration
MIN_BIN_PIXELS = 64  # selfcal_error: a bin with fewer of the image's pixels takes its median
# quantile bins of the gradient magnitude (8 or 32 scored the same, docs/print_study.md)
NUM_BINS = 16
MAX_FIT_IMAGES = 40  # training images the expected residual is fitted on, at most


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare their fields
class Calibration:
  """E_good[sq_error | g]: ``expected[k]`` for gradient magnitudes g in bin k, the bins cut at
  ``edges`` (``np.digitize(g, edges)``: bin 0 below edges[0], the last at or above edges[-1])."""
  edges: np.ndarray  # [NUM_BINS - 1] increasing
  expected: np.ndarray  # [NUM_BINS] > 0

  def to_json(self) -> dict[str, Any]:
    return {'map': MAP, 'feature': 'sobel_gradient_magnitude_of_reconstruction',
            'edges': [float(v) for v in self.edges],
            'expected': [float(v) for v in self.expected]}

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> 'Calibration':
    return cls(np.asarray(obj['edges'], np.float64), np.asarray(obj['expected'], np.float64))


def gradient_magnitude(reconstruction: np.ndarray) -> np.ndarray:
  """|∇x̂| [H, W] of a reconstruction [H, W, C] (its channel mean), by Sobel filters with the
  image mirrored at its borders; float64."""
  r = np.mean(np.asarray(reconstruction, np.float64), axis=-1)
  return np.hypot(scipy.ndimage.sobel(r, 0, mode='reflect'),
                  scipy.ndimage.sobel(r, 1, mode='reflect'))


def fit(sq_maps, reconstructions, num_bins: int = NUM_BINS) -> Calibration:
  """The expected squared residual of good images per gradient bin.

  sq_maps: [N, H, W] (or a list of [H_i, W_i]) ``sq_error`` maps of good images;
  reconstructions: the matching [N, H, W, C] (or list of [H_i, W_i, C]). The bins are the
  ``num_bins`` quantiles of all their pixels' gradient magnitudes. A bin without pixels
  (repeated edges) takes the overall mean; every expected value is kept above 10⁻⁶ of it, so
  a residual of exactly 0 (a synthetic flat image) cannot divide by 0.
  """
  g = np.concatenate([gradient_magnitude(r).ravel() for r in reconstructions])
  sq = np.concatenate([np.asarray(m, np.float64).ravel() for m in sq_maps])
  if g.size != sq.size or not g.size:
    raise ValueError(f'calibration.fit: {sq.size} residual pixels against {g.size} '
                     'reconstruction pixels; pass matching, non-empty maps.')
  edges = np.quantile(g, np.linspace(0.0, 1.0, num_bins + 1)[1:-1])
  bins = np.digitize(g, edges)
  total = np.bincount(bins, weights=sq, minlength=num_bins)
  count = np.bincount(bins, minlength=num_bins)
  overall = float(np.mean(sq))
  expected = np.where(count > 0, total / np.maximum(count, 1), overall)
  floor = 1e-6 * overall + np.finfo(np.float32).tiny
  return Calibration(edges, np.maximum(expected, floor))


def apply(calibration: Calibration, sq_map: np.ndarray, reconstruction: np.ndarray
          ) -> np.ndarray:
  """``cal_error`` [H, W] (float32) of one image: its ``sq_error`` [H, W] over the expected
  residual at its reconstruction's [H, W, C] gradient magnitudes."""
  return _calibrated(calibration, sq_map, reconstruction)[0].astype(np.float32)


def _calibrated(calibration: Calibration, sq_map, reconstruction) -> tuple[np.ndarray, np.ndarray]:
  """(``cal_error`` [H, W] float64, the gradient bin of each pixel [H, W])."""
  bins = np.digitize(gradient_magnitude(reconstruction), calibration.edges)
  return np.asarray(sq_map, np.float64) / calibration.expected[bins], bins


def apply_self(calibration: Calibration, sq_map: np.ndarray, reconstruction: np.ndarray
               ) -> np.ndarray:
  """``selfcal_error`` [H, W] (float32): ``cal_error`` over its own median among the image's
  pixels of the same gradient bin (the image's median where a bin holds fewer than
  :data:`MIN_BIN_PIXELS` of them). The image itself says what residual its good edges leave,
  for a surface whose texture differs in scale or contrast from the training images."""
  cal, bins = _calibrated(calibration, sq_map, reconstruction)
  overall = float(np.median(cal))
  divisor = np.full(len(calibration.expected), overall)
  for k in range(len(divisor)):
    values = cal[bins == k]
    if values.size >= MIN_BIN_PIXELS:
      divisor[k] = np.median(values)
  divisor = np.maximum(divisor, 1e-6 * max(overall, 0.0) + np.finfo(np.float32).tiny)
  return (cal / divisor[bins]).astype(np.float32)


def with_map(maps: dict[str, Any], calibration: Calibration, name: str = MAP) -> dict[str, Any]:
  """``maps`` ({'sq_error', 'reconstruction', ...}: [N] maps) with the calibrated map ``name``
  (``cal_error`` or ``selfcal_error``) added, in the same form ([N, H, W] array or a list)."""
  fn = {MAP: apply, SELF_MAP: apply_self}[name]
  out = [fn(calibration, m, r) for m, r in zip(maps['sq_error'], maps['reconstruction'])]
  return dict(maps, **{name: np.stack(out) if isinstance(maps['sq_error'], np.ndarray) else out})


def map_name(base_map: str) -> str:
  """The calibrated map that scoring adds for the configured base map (``cal_error`` unless
  ``selfcal_error`` is asked for)."""
  return base_map if base_map in MAPS else MAP


def fit_images(images, max_images: int = MAX_FIT_IMAGES):
  """At most ``max_images`` of ``images``, evenly spaced (the first and last included)."""
  n = len(images)
  idx = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
  return images[idx] if isinstance(images, np.ndarray) else [images[i] for i in idx]


def save(directory: str, calibration: Calibration) -> None:
  wd.write_json(os.path.join(directory, FILE), calibration.to_json())


def load(directory: str) -> Calibration:
  """The calibration saved in a run directory; VaeQcError when there is none."""
  return wd.read_table(
      os.path.join(directory, FILE), Calibration.from_json,
      'the run was evaluated without the calibrated map. Re-run its study with '
      '--config.eval.map=cal_error_logratio (add --allow_config_change to a finished run: it '
      'trains nothing) to fit it.', 'a map calibration')
