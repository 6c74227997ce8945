"""Overlapping tiles of large images, stitching of per-tile maps and score aggregation;
random patches for training.

Tiles start every ``stride`` pixels; the last row and column of tiles are snapped to the
bottom and right borders, so tiles cover the whole image and never reach outside it. An image
smaller than a tile raises ``DataError`` (resize it first): padding would invent pixels the
model would then score.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from vae_qc.errors import ConfigError, DataError


def _starts(length: int, tile: int, stride: int) -> list[int]:
  starts = list(range(0, length - tile + 1, stride))
  if starts[-1] + tile < length:
    starts.append(length - tile)
  return starts


def num_tiles(height: int, width: int, tile: int, stride: int) -> int:
  """How many tiles :func:`split_tiles` cuts from an image of height × width (≥ tile)."""
  return len(_starts(height, tile, stride)) * len(_starts(width, tile, stride))


def split_tiles(image: np.ndarray, tile: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
  """Cuts an image into overlapping square tiles.

  Args:
    image: [H, W, C] with H, W >= tile.
    tile: tile height and width (px).
    stride: step between tile origins, 1 <= stride <= tile.

  Returns:
    (tiles [T, tile, tile, C], origins int [T, 2] (row, column) of each tile's top-left pixel),
    row-major.
  """
  image = np.asarray(image)
  if image.ndim != 3:
    raise DataError(f'split_tiles needs an image [H, W, C], got shape {image.shape}.')
  if not 1 <= stride <= tile:
    raise ConfigError(f'stride must be in [1, tile={tile}] so tiles cover the image, '
                      f'got {stride}.')
  height, width = image.shape[:2]
  if height < tile or width < tile:
    raise DataError(f'image {width}x{height} is smaller than the tile {tile}x{tile}; '
                    'resize it or use a smaller tile.')
  origins = np.array([(r, c) for r in _starts(height, tile, stride)
                      for c in _starts(width, tile, stride)], np.int64)
  tiles = np.stack([image[r:r + tile, c:c + tile] for r, c in origins])
  return tiles, origins


class Stitcher:
  """Averages per-tile maps of one image layout back into image-sized maps.

  Built once per layout (origins, image size, tile size), it applies to any number of maps of
  those tiles: the flat index of every tile pixel and each pixel's tile count are made once,
  not once per map (an image has several maps, and a 1024 × 1024 photo thousands of tiles).

  Args:
    origins: int [T, 2] from ``split_tiles``.
    image_shape: (H, W) of the original image.
    tile_shape: (th, tw) of the tiles.
  """

  def __init__(self, origins: np.ndarray, image_shape: tuple[int, int],
               tile_shape: tuple[int, int]):
    origins = np.asarray(origins)
    if origins.ndim != 2 or origins.shape[1] != 2:
      raise DataError(f'stitch needs origins [T, 2], got {origins.shape}.')
    height, width = image_shape
    th, tw = tile_shape
    if len(origins) and (origins.min() < 0 or (origins[:, 0] + th).max() > height
                         or (origins[:, 1] + tw).max() > width):
      raise DataError(f'tiles of {th}x{tw} at the given origins reach outside the {width}x'
                      f'{height} image.')
    # The flat image index of every tile pixel [T·th·tw]; bincount adds each pixel's values
    # in tile order in float64, as a loop over the tiles would (the same sums, bit for bit),
    # without a Python step per tile.
    within = np.arange(th)[:, None] * width + np.arange(tw)[None, :]
    self._index = ((origins[:, 0] * width + origins[:, 1])[:, None, None] + within).ravel()
    self._count = np.bincount(self._index, minlength=height * width)
    if (self._count == 0).any():
      raise DataError(f'tiles do not cover the {width}x{height} image.')
    self._maps_shape = (len(origins), th, tw)
    self._image_shape = (height, width)

  def __call__(self, maps: np.ndarray) -> np.ndarray:
    """maps [T, th, tw] -> float32 [H, W]: each pixel the mean over the tiles that cover it."""
    maps = np.asarray(maps)
    if maps.shape != self._maps_shape:
      raise DataError(f'stitch needs maps {list(self._maps_shape)} (tiles, height, width) for '
                      f'these origins, got {list(maps.shape)}.')
    total = np.bincount(self._index, weights=maps.reshape(-1).astype(np.float64),
                        minlength=self._count.size)
    return (total / self._count).reshape(self._image_shape).astype(np.float32)


def stitch(maps: np.ndarray, origins: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
  """Averages per-tile maps back into one image-sized map (one map; several maps of the same
  tiles: :class:`Stitcher`).

  Args:
    maps: [T, tile, tile] per-pixel values of each tile.
    origins: int [T, 2] from ``split_tiles``.
    image_shape: (H, W) of the original image.

  Returns:
    float32 [H, W]: each pixel is the mean over the tiles that cover it.
  """
  maps = np.asarray(maps)
  origins = np.asarray(origins)
  if maps.ndim != 3 or origins.shape != (maps.shape[0], 2):
    raise DataError(f'stitch needs maps [T, tile, tile] and origins [T, 2], got {maps.shape} '
                    f'and {origins.shape}.')
  return Stitcher(origins, image_shape, maps.shape[1:])(maps)


def aggregate(patch_scores: np.ndarray, method: str = 'max', k: int = 1) -> float:
  """One image score from its tiles' scores [T] (bigger = more anomalous).

  Methods: 'max'; 'mean'; 'topk', the mean of the k largest (k is capped at T).
  """
  scores = np.asarray(patch_scores, np.float64).reshape(-1)
  if scores.size == 0:
    raise DataError('aggregate needs at least one tile score.')
  if method == 'max':
    return float(scores.max())
  if method == 'mean':
    return float(scores.mean())
  if method == 'topk':
    if k < 1:
      raise ConfigError(f'topk aggregation needs k >= 1, got {k}.')
    return float(np.sort(scores)[-k:].mean())
  raise ConfigError(f"aggregation method must be 'max', 'mean' or 'topk', got {method!r}.")


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Scoring of images larger than the model input: overlapping tiles of ``size`` pixels
  every ``stride``; tile scores aggregate to an image score, tile maps are stitched back
  (overlaps averaged). ``size`` 0: images are scored whole."""
  size: int = 0
  stride: int = 0
  aggregate: str = 'max'
  topk: int = 3

  @classmethod
  def from_config(cls, data_cfg, arch: str = 'global') -> 'Tiling':
    """From ``config.data``. A global model trained on random patches (``patch_size``) scores
    tiles of that size unless ``tile_size`` says otherwise; a spatial model needs no tiles."""
    if arch == 'spatial':
      return cls()
    size = int(data_cfg.get('tile_size', 0) or 0) or int(data_cfg.get('patch_size', 0) or 0)
    t = cls(size, int(data_cfg.get('tile_stride', 0) or size // 2),
            data_cfg.get('tile_aggregate', 'max'), int(data_cfg.get('tile_topk', 3)))
    if size and t.aggregate not in ('max', 'mean', 'topk'):
      raise ConfigError('config.data.tile_aggregate must be max, mean or topk, got '
                        f'{t.aggregate!r}.')
    return t

  def tiles(self, images) -> tuple[np.ndarray, list[tuple[np.ndarray, tuple[int, int]]]]:
    """All tiles of ``images`` (N arrays [H_i, W_i, C]) and, per image, (origins, (H, W))."""
    out, layout = [], []
    for image in images:
      t, origins = split_tiles(image, self.size, self.stride)
      out.append(t)
      layout.append((origins, image.shape[:2]))
    return np.concatenate(out), layout


# The symmetries (codes of :func:`_transform`) each setting draws from, with equal chance.
AUGMENTS = {
    'none': (0,),  # the patches as they are
    'hflip': (0, 1),  # and mirrored left-right
    'vflip': (0, 2),  # and mirrored top-bottom
    'flips': (0, 1, 2, 3),  # either mirror or both (layer lines, brick: the print direction holds)
    'dihedral': tuple(range(8)),  # and turned by 90° (isotropic textures: gravel, sand, foam)
}


def check_augment(augment: str) -> None:
  """ConfigError unless ``augment`` is one of :data:`AUGMENTS`."""
  if augment not in AUGMENTS:
    raise ConfigError(f'config.data.augment must be one of {", ".join(AUGMENTS)}, got '
                      f"{augment!r}; choose the symmetries your good surfaces have ('none' if "
                      'unsure: a turned patch can itself be a defect).')


def _transform(patch: np.ndarray, k: int) -> np.ndarray:
  """The k-th of the 8 symmetries of a square [S, S, C]: bit 0 mirrors left-right, bit 1
  top-bottom, bit 2 transposes (with the mirrors, the turns by 90°)."""
  if k & 1:
    patch = patch[:, ::-1]
  if k & 2:
    patch = patch[::-1]
  if k & 4:
    patch = patch.transpose(1, 0, 2)
  return patch


def check_zoom(zoom) -> float:
  """``zoom`` as a float; ConfigError unless it is a finite number ≥ 1."""
  try:
    value = float(zoom)
  except (TypeError, ValueError):
    value = float('nan')
  if not (math.isfinite(value) and value >= 1.0):
    raise ConfigError(f'config.data.zoom must be a number >= 1 (1: no zoom; 1.25: each training '
                      f'patch zoomed by a random factor between 1/1.25 and 1.25), got {zoom!r}.')
  return value


def _resample(image: np.ndarray, row: float, col: float, side: float, size: int) -> np.ndarray:
  """The square window of ``image`` [H, W, C] at (row, col) with sides ``side`` (px, real
  numbers) resampled to [size, size, C] by Pillow's Lanczos filter (3 lobes, widened to
  average when ``side`` > size, so no aliasing). Lanczos keeps the texture's fine detail:
  resampled white noise keeps 0.86 of its sd at scale 1 and a fractional offset, against
  0.57 for bilinear, so the model does not learn a blurred texture."""
  height, width, _ = image.shape
  margin = 3 * int(math.ceil(side / size)) + 1  # the filter's reach, in pixels of the image
  r0, c0 = max(0, int(row) - margin), max(0, int(col) - margin)
  r1 = min(height, int(math.ceil(row + side)) + margin)
  c1 = min(width, int(math.ceil(col + side)) + margin)
  box = (col - c0, row - r0, col - c0 + side, row - r0 + side)
  window = image[r0:r1, c0:c1].astype(np.float32)
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(window[..., k])).resize(
      (size, size), Image.Resampling.LANCZOS, box=box)) for k in range(image.shape[-1])], -1)


def random_patches(images: np.ndarray, size: int, seed: int, step: int,
                   augment: str = 'none', zoom: float = 1.0) -> np.ndarray:
  """One random ``size``×``size`` crop of each image, drawn afresh for every training step.

  Args:
    images: [B, H, W, C] with H, W >= size.
    size: patch height and width (px).
    seed, step: the crops are a function of (seed, step) only, so a resumed run draws the
      same ones; every offset (0..H − size, 0..W − size) of every image has the same chance.
    augment: symmetries drawn with equal chance for each crop (:data:`AUGMENTS`): 'none',
      'hflip', 'vflip', 'flips' or 'dihedral'.
    zoom: ≥ 1. Above 1, each crop is a square window of side ``size`` · s, with log s
      uniform in [−log zoom, log zoom] (s capped where the window would not fit the image),
      placed uniformly at real-valued offsets and resampled to ``size`` (:func:`_resample`):
      the model sees the texture at every scale between 1/zoom and zoom, as a camera at
      another distance or a surface in perspective shows it.

  Returns:
    [B, size, size, C], float32 when zoomed, else the images' dtype.
  """
  images = np.asarray(images)
  _, height, width, _ = images.shape
  if not 1 <= size <= min(height, width):
    raise ConfigError(f'patch size {size} must be between 1 and the image size {height}x{width} '
                      '(config.data.patch_size).')
  check_augment(augment)
  zoom = check_zoom(zoom)
  rng = np.random.default_rng([seed, step, 13])
  if zoom == 1.0:
    rows = rng.integers(0, height - size + 1, len(images))
    cols = rng.integers(0, width - size + 1, len(images))
    patches = [im[r:r + size, c:c + size] for im, r, c in zip(images, rows, cols)]
  else:
    scale = np.exp(rng.uniform(-math.log(zoom), math.log(zoom), len(images)))
    sides = size * np.minimum(scale, min(height, width) / size)
    rows = rng.uniform(0.0, height - sides)
    cols = rng.uniform(0.0, width - sides)
    patches = [_resample(im, r, c, s, size) for im, r, c, s in zip(images, rows, cols, sides)]
  if augment != 'none':
    codes = AUGMENTS[augment]
    picks = rng.integers(0, len(codes), len(images))
    patches = [_transform(p, codes[i]) for p, i in zip(patches, picks)]
  return np.stack(patches)
