"""The scale of a texture: how many pixels its structure spans, and the resampling that brings
it to the scale a patch recipe was chosen at.

A patch model sees a surface through its patch: the CPU print recipe's 32×32 patches were
chosen on textures whose structure spans 7–16 px (the generated surfaces' layer pitch at
224×224, the bricks and pebbles of the photographed validation sets; README, "Print
surfaces"). The same surface photographed at four times the resolution puts one layer in a
patch, and the recipe no longer sees a texture: the generator's surfaces at 1024×1024 scored
0.85 image AUROC at their size and 0.92 resampled to 224×224 (docs/print_study.md, "The
texture's scale"). ``config.data.max_period`` (px, 0: off) resamples every image of a run
by the factor that brings its training images' texture period down to at most that many
pixels (:func:`scale_for`); never up.

The period (:func:`period`) is the geometric mean of the periods of the training images'
power spectrum, weighted by its energy per octave: the spectrum of the grey image less its
mean, through a Hann window, radially averaged, over periods from 2 px to a quarter of the
image's shorter side (longer ones are the lighting, not the texture). For layer lines it lies
near their pitch, for bricks near their height, for a stochastic texture near its grain.

The resampling (:func:`resample`) is Pillow's bilinear filter, which reduces with a tent
over twice the pixels each output pixel covers (no aliasing; the filter ``image_size`` uses);
a mask is averaged over the pixels each output pixel covers (Pillow's box filter) and kept
where at least half of it was defect. Study
and ``predict.py`` resample through this one function, so that a photo scores as the run's
test images did.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from vae_qc.errors import ConfigError

MAX_IMAGES = 20  # images the period is estimated on, at most (evenly spaced)
NUM_BANDS = 24  # octave-spaced bands of the radially averaged spectrum


def period(images) -> float:
  """The texture period in pixels of ``images`` ([N, H, W, C] or a list of [H, W, C]): the
  energy-weighted geometric mean period of their power spectrum (module docstring; the bands
  end at a quarter of the smallest image's shorter side)."""
  n = len(images)
  if not n:
    raise ValueError('period() needs at least one image.')
  idx = np.unique(np.linspace(0, n - 1, min(n, MAX_IMAGES)).round().astype(int))
  side = min(min(np.shape(images[i])[:2]) for i in idx)
  edges = np.geomspace(4.0 / side, 0.5, NUM_BANDS + 1)  # cycles per pixel
  energy = sum(_band_energy(np.asarray(images[i], np.float64), edges) for i in idx)
  if energy.sum() <= 0:  # flat images: no texture, nothing to resample
    return 0.0
  log_period = -0.5 * (np.log(edges[:-1]) + np.log(edges[1:]))  # each band's centre
  return float(np.exp(np.sum(energy * log_period) / energy.sum()))


def _band_energy(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Energy per octave of ``x`` [H, W] or [H, W, C] (grey: the channels' mean) in the bands
  of frequency ``edges`` (cycles per pixel, increasing)."""
  x = x.mean(-1) if x.ndim == 3 else x
  h, w = x.shape
  x = (x - x.mean()) * np.outer(np.hanning(h), np.hanning(w))
  power = np.abs(np.fft.fft2(x)) ** 2
  freq = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing='ij'))
  bands = len(edges) - 1
  band = np.digitize(freq.ravel(), edges) - 1
  inside = (band >= 0) & (band < bands)
  energy = np.bincount(band[inside], power.ravel()[inside], bands)
  return energy / np.log(edges[1:] / edges[:-1])


def check_max_period(value) -> float:
  """``config.data.max_period`` as a float; ConfigError unless a finite number ≥ 0."""
  try:
    period = float(value)
  except (TypeError, ValueError):
    period = float('nan')
  if not np.isfinite(period) or period < 0:
    raise ConfigError(f'config.data.max_period must be a number of pixels >= 0 (0: images at '
                      f'their size), got {value!r}.')
  return period


def scale_for(texture_period: float, max_period: float) -> float:
  """The factor (≤ 1) that brings ``texture_period`` down to ``max_period`` (1: off when
  ``max_period`` ≤ 0, or already within it)."""
  if max_period <= 0 or texture_period <= max_period:
    return 1.0
  return float(max_period / texture_period)


def scaled_shape(shape, factor: float) -> tuple[int, int]:
  """(H, W) of an image of ``shape`` (H, W, ...) resampled by ``factor`` (at least 1 px)."""
  return tuple(max(1, int(round(s * factor))) for s in shape[:2])


def resample(image: np.ndarray, factor: float) -> np.ndarray:
  """[H, W, C] float32 image resampled by ``factor`` (the module's filter); as given at 1."""
  if factor == 1:
    return image
  h, w = scaled_shape(image.shape, factor)
  return np.stack([_plane(image[..., c], h, w) for c in range(image.shape[-1])], -1)


def resample_mask(mask: np.ndarray, factor: float) -> np.ndarray:
  """[H, W] bool mask resampled by ``factor``: true where at least half of an output pixel
  was."""
  if factor == 1:
    return mask
  h, w = scaled_shape(mask.shape, factor)
  return _plane(mask.astype(np.float32), h, w, Image.Resampling.BOX) >= 0.5


def resample_all(images, factor: float):
  """:func:`resample` of each image of [N, H, W, C] (an array back) or of a list."""
  if factor == 1:
    return images
  out = [resample(np.asarray(im, np.float32), factor) for im in images]
  return np.stack(out) if isinstance(images, np.ndarray) else out


def _plane(plane: np.ndarray, h: int, w: int,
           resample=Image.Resampling.BILINEAR) -> np.ndarray:
  return np.asarray(Image.fromarray(np.ascontiguousarray(plane, np.float32), 'F').resize(
      (w, h), resample), np.float32)
