"""Synthetic fused-filament 3D-print surfaces with exact defect masks.

A good surface is a side wall seen head-on: parallel layer lines (beads of extruded filament)
with a random pitch, tilt, waviness and nozzle-width variation, shaded by one light (diffuse +
Blinn specular), a lighting gradient with vignetting, a specular band and signal-dependent
sensor noise, in a filament colour drawn per image from ``PALETTE`` (grayscale images use the
colour's luminance). All lengths are fractions of the image size, so 224 and 1024 pixel images
look alike.

Defects (``DEFECT_KINDS``) change the geometry or add material inside a region; pixels outside
the returned mask are exactly those of the good surface drawn from the same generator (noise
included), so masks are exact. Every mask covers ``MIN_DEFECT_AREA``..``MAX_DEFECT_AREA`` of
the image (parameters are redrawn until it does).

- ``blob``: a zit of excess material (shaded cap with a contact shadow);
- ``stringing``: one to three thin sagging strands across the layers;
- ``under_extrusion``: a stretch of one or more layers with thin beads and deep dark gaps;
- ``over_extrusion``: a band of fat, lumpy, glossy layers without grooves;
- ``scratch``: a V-groove with stress-whitened plastic;
- ``layer_shift``: a ledge (exposed top face plus cast shadow) along one or two layers;
- ``warping``: the bottom corner (bed contact area) lifts: layers bend up, a dark gap opens.

``write_dataset`` writes the MVTec AD layout read by ``vae_qc.data.folder``. Image ``i`` of a
split and kind is drawn from ``image_rng(seed, split, kind, i)``, so it does not depend on how
many images are written. Command line::

  python -m vae_qc.data.print_surfaces --out DIR --size 224 --n_train 200 --n_test_good 50 \
      --n_test_defect 20 --seed 0 --channels 1
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np
from PIL import Image

from vae_qc import progress as progress_lib
from vae_qc.errors import ConfigError, DataError

DEFECT_KINDS = ('blob', 'stringing', 'under_extrusion', 'over_extrusion', 'scratch',
                'layer_shift', 'warping')
MIN_DEFECT_AREA = 0.005  # Fraction of the image a defect mask covers at least...
MAX_DEFECT_AREA = 0.10  # ... and at most.
MIN_SIZE = 64
# The smallest lift a warping mask holds: 0.4 px of a 224-px image, the same fraction of the
# image at any size. (A threshold of 0.4 px of the image drawn held, at 768 px, the fading
# bend down to lifts of 0.12 px at 224 px: masks ~1.6 times as large, and the area bound then
# redrew the larger warps.)
WARP_MASK_LIFT = 0.4
WARP_MASK_SIZE = 224
# Filament colours, linear RGB in [0, 1].
PALETTE = {
    'white': (0.90, 0.90, 0.88),
    'black': (0.13, 0.13, 0.14),
    'grey': (0.55, 0.56, 0.58),
    'red': (0.78, 0.13, 0.12),
    'orange': (0.93, 0.48, 0.10),
    'yellow': (0.92, 0.80, 0.18),
    'green': (0.16, 0.58, 0.26),
    'blue': (0.13, 0.30, 0.72),
    'natural': (0.84, 0.79, 0.64),
}
_LUMA = np.array([0.299, 0.587, 0.114])
_SPLIT_IDS = {'train': 0, 'test': 1}
_KIND_IDS = {'good': 0, **{kind: i + 1 for i, kind in enumerate(DEFECT_KINDS)}}
_MAX_TRIES = 200


@dataclasses.dataclass
class _Surface:
  """Parameters and precomputed fields ([H, W] float32) of one good surface."""
  size: int
  x: np.ndarray  # [H, W] column coordinate (px).
  y: np.ndarray  # [H, W] row coordinate (px).
  u: np.ndarray  # [H, W] across the layers (px), increasing towards the bed (bottom).
  v: np.ndarray  # [H, W] along the layers (px).
  cos: float  # Layer direction (cos, sin) in (x, y).
  sin: float
  pitch: float  # Layer height (px).
  phase: float  # Layer phase at the image centre (layers).
  waves: np.ndarray  # [2, 3] waviness terms: amplitude (layers), wavenumber (rad/px), phase.
  width: np.ndarray  # [L] bead width as a fraction of the pitch.
  offset: np.ndarray  # [L] bead centre offset (layers).
  gain: np.ndarray  # [L] per-layer brightness.
  wobble: np.ndarray  # [L] phase of the along-line nozzle-width variation.
  wobble_amp: float
  wobble_k: float  # rad/px.
  flat: float  # Bead height / half width.
  light: np.ndarray  # [3] unit light direction (x, y, z), z towards the camera.
  half: np.ndarray  # [3] unit Blinn half vector.
  shininess: float
  ambient: float
  groove: float  # Brightness of the gaps between beads, relative to the albedo.
  albedo: np.ndarray  # [C]
  light_map: np.ndarray  # [H, W] lighting gradient x vignetting x exposure.
  spec_map: np.ndarray  # [H, W] specular strength (base + band).
  noise: float  # Sensor noise standard deviation at mid grey.

  @property
  def layer0(self) -> int:
    """Index offset so that layer ``k`` has parameters at ``k + layer0``."""
    return self.width.size // 2


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  y, x = np.indices((size, size), dtype=np.float32)
  y.setflags(write=False)
  x.setflags(write=False)
  return y, x


def _check_args(size: int, channels: int, palette: Sequence[str] | None) -> tuple[str, ...]:
  if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
    raise ConfigError(f'size must be an integer >= {MIN_SIZE}, got {size!r}.')
  if channels not in (1, 3):
    raise ConfigError(f'channels must be 1 or 3, got {channels!r}.')
  names = tuple(PALETTE) if palette is None else tuple(palette)
  unknown = [name for name in names if name not in PALETTE]
  if unknown or not names:
    raise ConfigError(f'unknown palette colours {unknown}; choose from {sorted(PALETTE)}.')
  return names


def _sample_surface(rng: np.random.Generator, size: int, channels: int,
                    palette: tuple[str, ...]) -> _Surface:
  """Draws the parameters of one good surface and precomputes its fields."""
  y, x = _grid(size)
  c = (size - 1) / 2
  angle = np.deg2rad(rng.uniform(-6, 6))
  cos, sin = float(np.cos(angle)), float(np.sin(angle))
  pitch = size / rng.uniform(16, 40)
  n_layers = int(2 * size / pitch) + 16

  lu, lv = rng.uniform(-0.7, 0.7), rng.uniform(-0.3, 0.3)
  light = np.array([-lu * sin + lv * cos, lu * cos + lv * sin, 0.0])
  light[2] = np.sqrt(1 - np.sum(light**2))
  half = light + [0, 0, 1]
  half /= np.linalg.norm(half)

  colour = np.array(PALETTE[palette[rng.integers(len(palette))]]) + rng.normal(0, 0.02, 3)
  colour = np.clip(colour, 0.03, 0.97)
  albedo = colour if channels == 3 else np.array([colour @ _LUMA])

  grad_dir = rng.uniform(0, 2 * np.pi)
  grad = rng.uniform(0, 0.35) * ((x - c) * np.cos(grad_dir) + (y - c) * np.sin(grad_dir)) / size
  r2 = ((x - c)**2 + (y - c)**2) / (size**2 / 2)
  light_map = (1 + grad) * (1 - rng.uniform(0, 0.3) * r2)
  light_map *= rng.uniform(0.75, 1.0) / light_map.max()
  band_dir = rng.uniform(0, np.pi)
  band = ((x - c) * np.cos(band_dir) + (y - c) * np.sin(band_dir) -
          rng.uniform(-0.4, 0.4) * size) / (rng.uniform(0.08, 0.3) * size)
  spec_map = rng.uniform(0.03, 0.1) + rng.uniform(0.1, 0.45) * np.exp(-0.5 * band**2)

  base_width = rng.uniform(0.78, 0.93)
  return _Surface(
      size=size, x=x, y=y,
      u=-(x - c) * sin + (y - c) * cos,
      v=(x - c) * cos + (y - c) * sin,
      cos=cos, sin=sin, pitch=pitch, phase=rng.uniform(0, 1),
      waves=np.array([
          [rng.uniform(0, 0.12), 2 * np.pi / (rng.uniform(0.3, 1.5) * size),
           rng.uniform(0, 2 * np.pi)],
          [rng.uniform(0, 0.05), 2 * np.pi / (rng.uniform(0.05, 0.2) * size),
           rng.uniform(0, 2 * np.pi)]]),
      width=np.clip(base_width + rng.normal(0, 0.02, n_layers), 0.6, 0.98).astype(np.float32),
      offset=rng.normal(0, 0.03, n_layers).astype(np.float32),
      gain=(1 + rng.normal(0, 0.03, n_layers)).astype(np.float32),
      wobble=rng.uniform(0, 2 * np.pi, n_layers).astype(np.float32),
      wobble_amp=rng.uniform(0.02, 0.08),
      wobble_k=2 * np.pi / (rng.uniform(0.03, 0.12) * size),
      flat=rng.uniform(0.5, 1.0),
      light=light, half=half, shininess=rng.uniform(10, 40),
      ambient=rng.uniform(0.15, 0.3), groove=rng.uniform(0.15, 0.35),
      albedo=albedo.astype(np.float32),
      light_map=light_map.astype(np.float32), spec_map=spec_map.astype(np.float32),
      noise=rng.uniform(0.004, 0.02))


def _shade(s: _Surface, nx, ny, nz, albedo=None, gloss=1.0) -> np.ndarray:
  """Diffuse + specular shading of unit normals ([H, W] each) -> [H, W, C]."""
  albedo = s.albedo if albedo is None else albedo
  (lx, ly, lz), (hx, hy, hz) = s.light.tolist(), s.half.tolist()
  diffuse = np.maximum(nx * lx + ny * ly + nz * lz, 0)
  spec = np.maximum(nx * hx + ny * hy + nz * hz, 0)**s.shininess
  base = (s.ambient + (1 - s.ambient) * diffuse) * s.light_map
  return base[..., None] * albedo + (gloss * spec * s.spec_map * s.light_map)[..., None]


def _layer_coord(s: _Surface, dt=0.0) -> np.ndarray:
  """Continuous layer coordinate t [H, W]: layer k covers k <= t < k + 1."""
  t = s.u / s.pitch + s.phase + dt
  for amp, k, phase in s.waves.tolist():
    t = t + amp * np.sin(k * s.v + phase)
  return t


def _render(s: _Surface, dt=0.0, width=1.0, gain=1.0, gloss=1.0, groove=1.0) -> np.ndarray:
  """Noise-free layered surface [H, W, C].

  Args:
    s: the surface.
    dt: displacement across the layers (layers), scalar or [H, W].
    width, gain, gloss, groove: multipliers (scalar or [H, W]) of the bead width, bead
      brightness, specular strength and gap brightness.
  """
  t = _layer_coord(s, dt)
  k = np.floor(t)
  idx = np.clip(k.astype(np.intp) + s.layer0, 0, s.width.size - 1)
  c = t - k - 0.5 - s.offset[idx]
  hw = 0.5 * s.width[idx] * (1 + s.wobble_amp * np.sin(s.wobble_k * s.v + s.wobble[idx])) * width
  r = np.clip(c / hw, -1, 1)
  nu, nz = r * s.flat, np.sqrt(1 - r * r)
  norm = np.sqrt(nu * nu + nz * nz)
  nu, nz = nu / norm, nz / norm
  bead = _shade(s, -s.sin * nu, s.cos * nu, nz, gloss=gloss) * (s.gain[idx] * gain)[..., None]
  gap = (s.groove * groove * s.light_map)[..., None] * s.albedo
  alpha = np.clip((hw - np.abs(c)) * s.pitch + 0.5, 0, 1)[..., None]  # 1 px anti-aliasing.
  return (gap + alpha * (bead - gap)).astype(np.float32)


def _pick_point(rng, s: _Surface, lo=0.15, hi=0.85) -> tuple[int, int]:
  row, col = (rng.uniform(lo, hi, 2) * s.size).astype(int).tolist()
  return row, col


def _layer_band(rng, s: _Surface, t, height: float, length: float):
  """A stretch of whole layers around a random point.

  Returns (band [H, W] bool, ramp [H, W] in [0, 1] rising over the first and last 10% of the
  stretch).
  """
  row, col = _pick_point(rng, s)
  k = np.floor(t)
  first = k[row, col]
  n = max(1, round(height * s.size / s.pitch))
  along = np.abs(s.v - s.v[row, col])
  band = (k >= first) & (k < first + n) & (along < length / 2)
  ramp = np.clip((length / 2 - along) / (0.1 * length), 0, 1) * band
  return band, ramp


def _blob(rng, s: _Surface, clean, t):
  del t
  row, col = _pick_point(rng, s, 0.12, 0.88)
  radius = rng.uniform(0.04, 0.085) * s.size
  dx, dy = s.x - col, s.y - row
  phi = np.arctan2(dy, dx)
  a1, a2 = rng.uniform(0, 0.15, 2).tolist()
  p1, p2 = rng.uniform(0, 2 * np.pi, 2).tolist()
  rho = radius * (1 + a1 * np.sin(2 * phi + p1) + a2 * np.sin(3 * phi + p2))
  d = np.hypot(dx, dy) / rho
  steep = rng.uniform(0.6, 1.2)
  nx, ny, nz = steep * dx / rho, steep * dy / rho, np.sqrt(np.clip(1 - d * d, 0, 1))
  norm = np.sqrt(nx * nx + ny * ny + nz * nz)
  cap = _shade(s, nx / norm, ny / norm, nz / norm, albedo=s.albedo * rng.uniform(0.85, 1.0),
               gloss=rng.uniform(1.5, 3.0))
  shadow = (0.55 + 0.45 * np.clip((d - 1) / 0.2, 0, 1))[..., None] * clean
  return np.where((d < 1)[..., None], cap, shadow), d < 1.2


def _stringing(rng, s: _Surface, clean, t):
  del t
  image, mask = clean.copy(), np.zeros(clean.shape[:2], bool)
  for _ in range(rng.integers(1, 4)):
    angle = np.arctan2(s.sin, s.cos) + rng.choice([-1, 1]) * np.deg2rad(rng.uniform(25, 90))
    ca, sa = float(np.cos(angle)), float(np.sin(angle))
    row, col = _pick_point(rng, s, 0.2, 0.8)
    half_len = rng.uniform(0.15, 0.4) * s.size
    sag = rng.uniform(-0.08, 0.08) * 2 * half_len
    thick = max(1.5, rng.uniform(0.006, 0.012) * s.size)
    a = ((s.x - col) * ca + (s.y - row) * sa) / half_len
    b = -(s.x - col) * sa + (s.y - row) * ca
    slope = -2 * sag * a / half_len
    dist = (b - sag * (1 - a * a)) / np.sqrt(1 + slope * slope)
    r = dist / (0.5 * thick * (0.6 + 0.4 * np.sqrt(np.clip(1 - a * a, 0, 1))))
    on = (np.abs(a) <= 1) & (np.abs(r) < 1)
    rc = np.clip(r, -1, 1)
    strand = _shade(s, -sa * rc, ca * rc, np.sqrt(1 - rc * rc), gloss=2.0)
    image = np.where(on[..., None], 0.15 * image + 0.85 * strand, image)
    mask |= on
  return image, mask


def _under_extrusion(rng, s: _Surface, clean, t):
  del clean
  band, ramp = _layer_band(rng, s, t, rng.uniform(0.02, 0.05), rng.uniform(0.2, 0.6) * s.size)
  image = _render(s, width=1 - rng.uniform(0.45, 0.8) * ramp, groove=1 - 0.4 * ramp)
  return image, band


def _over_extrusion(rng, s: _Surface, clean, t):
  del clean
  band, ramp = _layer_band(rng, s, t, rng.uniform(0.04, 0.09), rng.uniform(0.3, 0.9) * s.size)
  lumps = 1 + 0.12 * np.sin(2 * np.pi * s.v / (rng.uniform(0.05, 0.15) * s.size) +
                            rng.uniform(0, 2 * np.pi))
  fat = rng.uniform(1.25, 1.45) * lumps
  image = _render(s, width=1 + (fat - 1) * ramp, gain=1 + 0.08 * ramp,
                  gloss=1 + rng.uniform(0.8, 1.5) * ramp)
  return image, band


def _scratch(rng, s: _Surface, clean, t):
  del t
  row, col = _pick_point(rng, s)
  angle = rng.uniform(0, np.pi)
  ca, sa = float(np.cos(angle)), float(np.sin(angle))
  half_len = rng.uniform(0.175, 0.4) * s.size
  half_width = max(1.0, rng.uniform(0.005, 0.01) * s.size)
  bend = rng.uniform(-0.03, 0.03) * 2 * half_len
  a = ((s.x - col) * ca + (s.y - row) * sa) / half_len
  r = (-(s.x - col) * sa + (s.y - row) * ca - bend * (1 - a * a)) / half_width
  r = r / np.sqrt(np.clip(1 - a * a, 1e-6, 1))**0.5  # Tapered ends.
  on = (np.abs(a) < 1) & (np.abs(r) < 1)
  tilt = 0.7 * np.sign(r)  # V-groove facets.
  whitened = s.albedo + rng.uniform(0.3, 0.6) * (0.95 - s.albedo)
  groove = _shade(s, -sa * tilt, ca * tilt, np.full_like(r, np.sqrt(1 - 0.49)),
                  albedo=whitened, gloss=0.3)
  return np.where(on[..., None], groove, clean), on


def _layer_shift(rng, s: _Surface, clean, t):
  row, col = _pick_point(rng, s, 0.2, 0.8)
  first = np.floor(t[row, col])
  n = 1 if rng.random() < 0.6 else 2
  g = (t - first) / n  # In [0, 1) inside the shifted layers.
  band = (g >= 0) & (g < 1)
  top = rng.uniform(0.35, 0.6)  # Fraction showing the exposed top face.
  nu, nz = -0.8, 0.6  # Top face tilted up, towards the nozzle side.
  face = _shade(s, np.full_like(g, -s.sin * nu), np.full_like(g, s.cos * nu),
                np.full_like(g, nz), gloss=2.0)
  shadow = 0.3 + 0.7 * np.clip((g - top) / (1 - top), 0, 1)**0.7
  return np.where((g < top)[..., None], face, shadow[..., None] * clean), band


def _warping(rng, s: _Surface, clean, t):
  del clean, t
  corner = 0 if rng.random() < 0.5 else s.size - 1
  length = rng.uniform(0.25, 0.5) * s.size
  lift = rng.uniform(0.03, 0.07) * s.size * np.clip(1 - np.abs(s.x - corner) / length, 0, 1)**2
  height = s.size - 1 - s.y  # Above the bottom edge (bed).
  bend = np.exp(-height / (rng.uniform(0.05, 0.12) * s.size))
  disp = lift * bend  # Upward displacement (px).
  image = _render(s, dt=disp * s.cos / s.pitch, gain=1 - 0.25 * (lift / lift.max()) * bend)
  gap = height < lift
  bed = rng.uniform(0.05, 0.15) * (0.5 + 0.5 * height / np.maximum(lift, 1e-6))
  image = np.where(gap[..., None], (bed * s.light_map)[..., None], image)
  return image, gap | (disp * (WARP_MASK_SIZE / s.size) > WARP_MASK_LIFT)


_DEFECTS: dict[str, Callable] = {
    'blob': _blob, 'stringing': _stringing, 'under_extrusion': _under_extrusion,
    'over_extrusion': _over_extrusion, 'scratch': _scratch, 'layer_shift': _layer_shift,
    'warping': _warping,
}


def _add_noise(rng: np.random.Generator, s: _Surface, clean: np.ndarray) -> np.ndarray:
  noise = rng.standard_normal(clean.shape, dtype=np.float32)
  image = clean + s.noise * np.sqrt(0.2 + np.clip(clean, 0, 1)) * noise
  return np.clip(image, 0, 1).astype(np.float32)


def generate_good(rng: np.random.Generator, size: int = 224, channels: int = 1,
                  palette: Sequence[str] | None = None) -> np.ndarray:
  """A defect-free print surface.

  Args:
    rng: source of randomness; the image is a function of its state.
    size: height and width (px), >= ``MIN_SIZE``.
    channels: 1 (grayscale: luminance of the filament colour) or 3 (RGB).
    palette: names of ``PALETTE`` colours to draw the filament colour from (default: all).

  Returns:
    float32 [size, size, channels] in [0, 1].
  """
  palette = _check_args(size, channels, palette)
  surface_rng, noise_rng = rng.spawn(2)
  s = _sample_surface(surface_rng, size, channels, palette)
  return _add_noise(noise_rng, s, _render(s))


def generate_defect(rng: np.random.Generator, kind: str, size: int = 224, channels: int = 1,
                    palette: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A print surface with one defect of ``kind``.

  The image equals ``generate_good`` of an identically seeded ``rng`` outside the mask.

  Args:
    rng: source of randomness.
    kind: one of ``DEFECT_KINDS``.
    size, channels, palette: as in ``generate_good``.

  Returns:
    (image float32 [size, size, channels] in [0, 1], mask bool [size, size]) with
    ``MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA``.
  """
  palette = _check_args(size, channels, palette)
  if kind not in _DEFECTS:
    raise ConfigError(f'unknown defect kind {kind!r}; choose from {DEFECT_KINDS}.')
  surface_rng, noise_rng, defect_rng = rng.spawn(3)
  s = _sample_surface(surface_rng, size, channels, palette)
  t = _layer_coord(s)
  clean = _render(s)
  for _ in range(_MAX_TRIES):
    image, mask = _DEFECTS[kind](defect_rng, s, clean, t)
    if MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA:
      image = np.where(mask[..., None], image.astype(np.float32), clean)
      return _add_noise(noise_rng, s, image), mask
  raise RuntimeError(f'no {kind} defect of allowed area in {_MAX_TRIES} draws (size {size}).')


def image_rng(seed: int, split: str, kind: str, index: int) -> np.random.Generator:
  """The generator of image ``index`` of ``split`` ('train'/'test') and ``kind``."""
  return np.random.default_rng(
      np.random.SeedSequence([seed, _SPLIT_IDS[split], _KIND_IDS[kind], index]))


def _save(path: pathlib.Path, array: np.ndarray) -> None:
  pixels = np.round(np.asarray(array, np.float32) * 255).astype(np.uint8)
  Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
                  ).save(path, compress_level=1)


def write_dataset(root: str | os.PathLike, size: int = 224, n_train: int = 200,
                  n_test_good: int = 50, n_test_defect: int = 20, seed: int = 0,
                  channels: int = 1, defects: Sequence[str] = DEFECT_KINDS,
                  palette: Sequence[str] | None = None, overwrite: bool = False) -> dict:
  """Writes a generated dataset in MVTec AD layout.

  ``root/train/good/NNN.png``, ``root/test/good/NNN.png``, ``root/test/<defect>/NNN.png``,
  ``root/ground_truth/<defect>/NNN_mask.png`` (8-bit, 0 or 255) and ``root/print_surfaces.json``
  (the returned summary).

  Args:
    root: output folder; it must not already hold a dataset unless ``overwrite``, which
      deletes its train/, test/ and ground_truth/ folders first.
    size, channels, palette: as in ``generate_good``.
    n_train, n_test_good: numbers of good images in train/good and test/good.
    n_test_defect: images per defect kind.
    seed: non-negative integer; image i comes from ``image_rng(seed, split, kind, i)``.
    defects: defect kinds to write.

  Returns:
    Summary: parameters, image counts per written folder (folders of 0 images are not
    created) and mask area fractions per defect kind.
  """
  palette = _check_args(size, channels, palette)
  unknown = [kind for kind in defects if kind not in _DEFECTS]
  if unknown:
    raise ConfigError(f'unknown defect kinds {unknown}; choose from {DEFECT_KINDS}.')
  if min(n_train, n_test_good, n_test_defect) < 0 or not isinstance(seed, int) or seed < 0:
    raise ConfigError('image counts and seed must be non-negative integers.')
  root = pathlib.Path(root)
  parts = [root / name for name in ('train', 'test', 'ground_truth')]
  if any(part.exists() for part in parts):
    if not overwrite:
      raise DataError(f'{root} already holds a dataset (train/, test/ or ground_truth/); '
                      'choose another folder or pass overwrite=True (--overwrite).')
    for part in parts:
      shutil.rmtree(part, ignore_errors=True)

  def stem(i: int, n: int) -> str:
    return f'{i:0{max(3, len(str(n - 1)))}d}'

  counts, areas = {}, {}
  progress = progress_lib.Progress(n_train + n_test_good + len(defects) * n_test_defect,
                                   'generating')
  for split, n in (('train', n_train), ('test', n_test_good)):
    if n:
      folder = root / split / 'good'
      folder.mkdir(parents=True)
      for i in range(n):
        _save(folder / f'{stem(i, n)}.png',
              generate_good(image_rng(seed, split, 'good', i), size, channels, palette))
        progress.update()
      counts[f'{split}/good'] = n
  for kind in defects if n_test_defect else ():
    folder, mask_folder = root / 'test' / kind, root / 'ground_truth' / kind
    folder.mkdir(parents=True)
    mask_folder.mkdir(parents=True)
    fractions = []
    for i in range(n_test_defect):
      image, mask = generate_defect(image_rng(seed, 'test', kind, i), kind, size, channels,
                                    palette)
      _save(folder / f'{stem(i, n_test_defect)}.png', image)
      _save(mask_folder / f'{stem(i, n_test_defect)}_mask.png', mask)
      fractions.append(float(mask.mean()))
      progress.update()
    counts[f'test/{kind}'] = n_test_defect
    areas[kind] = {'mean': float(np.mean(fractions)), 'min': min(fractions),
                   'max': max(fractions)}
  progress.finish()
  summary = {'generator': 'vae_qc.data.print_surfaces', 'size': size, 'channels': channels,
             'seed': seed, 'palette': list(palette), 'defects': list(defects),
             'counts': counts, 'mask_area_fraction': areas}
  (root / 'print_surfaces.json').write_text(json.dumps(summary, indent=2) + '\n')
  return summary


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m vae_qc.data.print_surfaces',
      description='Write synthetic 3D-print surface images in MVTec AD layout.')
  parser.add_argument('--out', required=True, help='output folder (dataset root)')
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--n_train', type=int, default=200)
  parser.add_argument('--n_test_good', type=int, default=50)
  parser.add_argument('--n_test_defect', type=int, default=20, help='images per defect kind')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--channels', type=int, default=1, choices=(1, 3))
  parser.add_argument('--defects', default=','.join(DEFECT_KINDS),
                      help='comma-separated defect kinds')
  parser.add_argument('--palette', default=','.join(PALETTE),
                      help='comma-separated filament colours')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace train/, test/ and ground_truth/ of an existing dataset')
  args = parser.parse_args(argv)
  start = time.perf_counter()
  try:
    summary = write_dataset(args.out, args.size, args.n_train, args.n_test_good,
                            args.n_test_defect, args.seed, args.channels,
                            [d for d in args.defects.split(',') if d],
                            [p for p in args.palette.split(',') if p], args.overwrite)
  except (ConfigError, DataError) as e:
    sys.exit(f'error: {e}')
  seconds = time.perf_counter() - start
  n = sum(summary['counts'].values())
  print(json.dumps(summary, indent=2))
  print(f'wrote {n} images to {args.out} in {seconds:.1f} s ({60 * n / seconds:.0f} images/min)')


if __name__ == '__main__':
  main()
