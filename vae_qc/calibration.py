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
of a Gaussian whose variance depends only on the reconstruction's local slope.

With a contrast window w (``config.eval.map_contrast_window``, 0: the slope alone) the
expected residual is also conditioned on the reconstruction's local contrast c, the standard
deviation of E[x|z] over the w × w pixels around each pixel (:func:`local_contrast`):

    cal_error(x)_ij = sq_error_ij / E_good[sq_error | g_ij, c_ij],

over :data:`NUM_BINS` × :data:`NUM_CONTRAST_BINS` cells of their quantiles (a cell with fewer
than :data:`MIN_CELL_PIXELS` good pixels takes its slope bin's value). The detail a model
cannot redraw, and so leaves in the residual, grows with the contrast of the texture around
it: on a photographed texture some stones or bricks are rougher than others, and a flat pixel
amid rough ones leaves more residual than one amid smooth ones (docs/print_study.md, "A
calibration by slope and local contrast"). A decoder that
predicts σ per pixel (``gaussian_hetero``, ``z_error``) may raise σ inside a defect and so
explain it away; here σ follows the reconstruction, which redraws a defect as good surface.

With ``config.eval.map_residual = 'abs_error'`` the same tables are made of the absolute
residual ``abs_error`` = |x − E[x|z]| instead of ``sq_error``: the part of −log p(x_ij|z)
above its floor for a Laplace likelihood (``laplace_fixed``), as ``sq_error`` is for a
fixed-σ Gaussian.

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
from vae_qc.errors import ConfigError

FILE = 'map_calibration.json'
MAP = 'cal_error'
SELF_MAP = 'selfcal_error'
MAPS = (MAP, SELF_MAP)  # the maps that need a calibration
MIN_BIN_PIXELS = 64  # selfcal_error: a bin with fewer of the image's pixels takes its median
# quantile bins of the gradient magnitude (8 or 32 scored the same, docs/print_study.md)
NUM_BINS = 16
NUM_CONTRAST_BINS = 8  # quantile bins of the local contrast, with a contrast window
MIN_CELL_PIXELS = 200  # a (slope, contrast) cell with fewer good pixels takes its slope bin's
MAX_FIT_IMAGES = 40  # training images the expected residual is fitted on, at most
# the residual maps a calibration may divide (``config.eval.map_residual``): the squared
# residual, the excess −log p of a fixed-σ Gaussian, or the absolute one, that of a Laplace
RESIDUALS = ('sq_error', 'abs_error')


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare their fields
class Calibration:
  """E_good[r | g] of the residual map r = ``residual``: ``expected[k]`` for gradient
  magnitudes g in bin k, the bins cut at ``edges`` (``np.digitize(g, edges)``: bin 0 below
  edges[0], the last at or above edges[-1]).

  With a contrast window (``window`` > 0), E_good[r | g, c]: ``cell_expected[k, l]``
  for g in bin k and a local contrast c (:func:`local_contrast` over ``window`` px) in bin l,
  cut at ``contrast_edges``; ``expected`` still holds the slope bins' values."""
  edges: np.ndarray  # [NUM_BINS - 1] increasing
  expected: np.ndarray  # [NUM_BINS] > 0
  window: int = 0  # the local contrast's window (px); 0: the slope alone
  contrast_edges: np.ndarray | None = None  # [NUM_CONTRAST_BINS - 1] increasing
  cell_expected: np.ndarray | None = None  # [NUM_BINS, NUM_CONTRAST_BINS] > 0
  residual: str = 'sq_error'  # the residual map it divides (RESIDUALS)

  def to_json(self) -> dict[str, Any]:
    out = {'map': MAP, 'residual': self.residual,
           'feature': 'sobel_gradient_magnitude_of_reconstruction',
           'edges': [float(v) for v in self.edges],
           'expected': [float(v) for v in self.expected]}
    if self.window:
      out.update({'contrast_feature': 'local_std_of_reconstruction',
                  'contrast_window': int(self.window),
                  'contrast_edges': [float(v) for v in self.contrast_edges],
                  'cell_expected': [[float(v) for v in row] for row in self.cell_expected]})
    return out

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> 'Calibration':
    """Also reads the tables of runs made before the contrast window (the slope alone) and
    before ``residual`` (the squared residual)."""
    residual = check_residual(obj.get('residual', 'sq_error'))
    edges = np.asarray(obj['edges'], np.float64)
    expected = np.asarray(obj['expected'], np.float64)
    if edges.ndim != 1 or expected.shape != (len(edges) + 1,):
      raise ValueError(f'{len(edges)} bin edges need {len(edges) + 1} expected values, '
                       f'not {expected.shape}')
    window = int(obj.get('contrast_window', 0) or 0)
    if not window:
      return cls(edges, expected, residual=residual)
    contrast_edges = np.asarray(obj['contrast_edges'], np.float64)
    cells = np.asarray(obj['cell_expected'], np.float64)
    if contrast_edges.ndim != 1 or cells.shape != (len(edges) + 1, len(contrast_edges) + 1):
      raise ValueError(f'{len(edges) + 1} × {len(contrast_edges) + 1} bins need as many cell '
                       f'values, not {cells.shape}')
    return cls(edges, expected, window, contrast_edges, cells, residual)


def gradient_magnitude(reconstruction: np.ndarray) -> np.ndarray:
  """|∇x̂| [H, W] of a reconstruction [H, W, C] (its channel mean), by Sobel filters with the
  image mirrored at its borders (``scipy.ndimage.sobel`` along each axis, mode 'reflect',
  written as array slices: a third of its time on a 1024² map); float64."""
  r = np.mean(np.asarray(reconstruction, np.float64), axis=-1)
  p = np.pad(r, 1, mode='symmetric')  # scipy's 'reflect': the edge pixel repeated
  d0, d1 = p[2:, :] - p[:-2, :], p[:, 2:] - p[:, :-2]  # central differences [H, W+2], [H+2, W]
  return np.hypot(d0[:, :-2] + 2.0 * d0[:, 1:-1] + d0[:, 2:],  # ... smoothed 1-2-1 across
                  d1[:-2, :] + 2.0 * d1[1:-1, :] + d1[2:, :])


def local_contrast(reconstruction: np.ndarray, window: int) -> np.ndarray:
  """The standard deviation [H, W] of a reconstruction's [H, W, C] channel mean over the
  ``window`` × ``window`` pixels centred on each pixel, the image mirrored at its borders
  (scipy's 'reflect'); float64."""
  r = np.mean(np.asarray(reconstruction, np.float64), axis=-1)
  mean = scipy.ndimage.uniform_filter(r, window, mode='reflect')
  mean_sq = scipy.ndimage.uniform_filter(r * r, window, mode='reflect')
  return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def check_window(window: int) -> int:
  """``window`` as an int; ConfigError unless it is 0 or an odd number >= 3."""
  if window != int(window) or not (window == 0 or (window >= 3 and int(window) % 2 == 1)):
    raise ConfigError('config.eval.map_contrast_window is the width in pixels of the window '
                      'of the local contrast that the map calibration also bins by: 0 (the '
                      f'slope alone) or an odd number >= 3, e.g. 31; got {window!r}.')
  return int(window)


def check_residual(residual: str) -> str:
  """``residual``; ConfigError unless it is one of :data:`RESIDUALS`."""
  if residual not in RESIDUALS:
    raise ConfigError('config.eval.map_residual is the residual map that the map calibration '
                      f'divides: one of {", ".join(map(repr, RESIDUALS))} (\'abs_error\' for a '
                      f'Laplace likelihood, whose −log p grows with it); got {residual!r}.')
  return residual


def _quantile_bins(values: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
  """(edges [num_bins - 1] at the quantiles of ``values``, the bin of each value)."""
  edges = np.quantile(values, np.linspace(0.0, 1.0, num_bins + 1)[1:-1])
  return edges, np.digitize(values, edges)


def _bin_means(bins: np.ndarray, values: np.ndarray, num_bins: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """(the mean of ``values`` in each of ``num_bins`` bins, 0 where a bin is empty; the number
  of values in each)."""
  count = np.bincount(bins, minlength=num_bins)
  return np.bincount(bins, weights=values, minlength=num_bins) / np.maximum(count, 1), count


def fit(residual_maps, reconstructions, num_bins: int = NUM_BINS, window: int = 0,
        contrast_bins: int = NUM_CONTRAST_BINS, residual: str = 'sq_error') -> Calibration:
  """The expected residual of good images per gradient bin (and, with a contrast
  ``window``, per cell of gradient bin × local-contrast bin).

  residual_maps: [N, H, W] (or a list of [H_i, W_i]) maps of good images of the residual
  named by ``residual`` (``sq_error``, or ``abs_error``; :data:`RESIDUALS`);
  reconstructions: the matching [N, H, W, C] (or list of [H_i, W_i, C]). The bins are the
  ``num_bins`` quantiles of all their pixels' gradient magnitudes (and the ``contrast_bins``
  quantiles of their local contrasts). A bin without pixels (repeated edges) takes the
  overall mean, a cell with fewer than :data:`MIN_CELL_PIXELS` its gradient bin's; every
  expected value is kept above 10⁻⁶ of the overall mean, so a residual of exactly 0 (a
  synthetic flat image) cannot divide by 0.
  """
  window = check_window(window)
  residual = check_residual(residual)
  g = np.concatenate([gradient_magnitude(r).ravel() for r in reconstructions])
  res = np.concatenate([np.asarray(m, np.float64).ravel() for m in residual_maps])
  if g.size != res.size or not g.size:
    raise ValueError(f'calibration.fit: {res.size} residual pixels against {g.size} '
                     'reconstruction pixels; pass matching, non-empty maps.')
  edges, bins = _quantile_bins(g, num_bins)
  means, count = _bin_means(bins, res, num_bins)
  overall = float(np.mean(res))
  floor = 1e-6 * overall + np.finfo(np.float32).tiny
  expected = np.maximum(np.where(count > 0, means, overall), floor)
  if not window:
    return Calibration(edges, expected, residual=residual)
  c = np.concatenate([local_contrast(r, window).ravel() for r in reconstructions])
  contrast_edges, cbins = _quantile_bins(c, contrast_bins)
  means, count = _bin_means(bins * contrast_bins + cbins, res, num_bins * contrast_bins)
  cells = np.where(count >= MIN_CELL_PIXELS, means, np.repeat(expected, contrast_bins))
  return Calibration(edges, expected, window, contrast_edges,
                     np.maximum(cells, floor).reshape(num_bins, contrast_bins), residual)


def apply(calibration: Calibration, residual_map: np.ndarray, reconstruction: np.ndarray
          ) -> np.ndarray:
  """``cal_error`` [H, W] (float32) of one image: its residual map [H, W] (the calibration's
  ``residual``) over the expected residual at its reconstruction's [H, W, C] gradient
  magnitudes."""
  return _calibrated(calibration, residual_map, reconstruction)[0].astype(np.float32)


def _calibrated(calibration: Calibration, residual_map, reconstruction
                ) -> tuple[np.ndarray, np.ndarray]:
  """(``cal_error`` [H, W] float64, the gradient bin of each pixel [H, W])."""
  bins = np.digitize(gradient_magnitude(reconstruction), calibration.edges)
  if calibration.window:
    cbins = np.digitize(local_contrast(reconstruction, calibration.window),
                        calibration.contrast_edges)
    divisor = calibration.cell_expected[bins, cbins]
  else:
    divisor = calibration.expected[bins]
  return np.asarray(residual_map, np.float64) / divisor, bins


def apply_self(calibration: Calibration, residual_map: np.ndarray, reconstruction: np.ndarray
               ) -> np.ndarray:
  """``selfcal_error`` [H, W] (float32): ``cal_error`` over its own median among the image's
  pixels of the same gradient bin (the image's median where a bin holds fewer than
  :data:`MIN_BIN_PIXELS` of them). The image itself says what residual its good edges leave,
  for a surface whose texture differs in scale or contrast from the training images."""
  cal, bins = _calibrated(calibration, residual_map, reconstruction)
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
  (``cal_error`` or ``selfcal_error``) added, in the same form ([N, H, W] array or a list):
  the calibration's residual map (``calibration.residual``) over its expected value."""
  fn = {MAP: apply, SELF_MAP: apply_self}[name]
  residual = maps[calibration.residual]
  out = [fn(calibration, m, r) for m, r in zip(residual, maps['reconstruction'])]
  return dict(maps, **{name: np.stack(out) if isinstance(residual, np.ndarray) else out})


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
