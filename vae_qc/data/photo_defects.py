"""Defects drawn onto real photographed textures: a check on data the print generator did not make.

A photo shipped with scikit-image (``PHOTOS``: brick wall, gravel, grass; 512×512 grey), or a
photo of your own (the path of an image file; read as grey), is cut into three disjoint bands of
rows: the top half gives the training crops, the next quarter the validation crops (to choose
settings on) and the bottom quarter the test crops (to report on), so no test pixel was ever
seen in training or used to choose a setting. Test and validation crops get one defect each, of
kinds the print generator does not draw
(``DEFECT_KINDS``):

- ``hole``: a dark elliptical pit with a soft edge;
- ``stain``: an irregular region tinted darker or lighter, its texture kept;
- ``crack``: a thin dark jagged line (a random walk);
- ``patch``: a square of the same texture taken elsewhere, turned by 90° (a misplaced piece);
- ``smudge``: an irregular region blurred (the texture washed out);
- ``glint``: a bright specular spot.

Pixels outside a defect's mask are exactly those of the good crop, and every mask covers
``MIN_DEFECT_AREA``..``MAX_DEFECT_AREA`` of the crop. ``write_dataset`` writes the MVTec AD
layout read by ``vae_qc.data.folder``. Command line::

  python -m vae_qc.data.photo_defects --out DIR --photo brick --region test --size 128
  python -m vae_qc.data.photo_defects --out DIR --photo path/to/texture.png --region validation
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image
import scipy.ndimage
import skimage.data

from vae_qc.errors import ConfigError, DataError

PHOTOS = ('brick', 'gravel', 'grass')
DEFECT_KINDS = ('hole', 'stain', 'crack', 'patch', 'smudge', 'glint')
REGIONS = {'train': (0.0, 0.5), 'validation': (0.5, 0.75), 'test': (0.75, 1.0)}
MIN_DEFECT_AREA = 0.005
MAX_DEFECT_AREA = 0.10
_MAX_TRIES = 200


def load_photo(name: str) -> np.ndarray:
  """The photo ``name`` as float32 [H, W] in [0, 1]: a bundled one (``PHOTOS``) or the path of
  an image file (PNG, JPEG, TIFF, ...; colour is converted to grey, 16-bit scaled by 65535)."""
  if name in PHOTOS:
    return getattr(skimage.data, name)().astype(np.float32) / 255.0
  path = pathlib.Path(name)
  if not path.is_file():
    raise ConfigError(f'unknown photo {name!r}: no such file, and not a bundled photo; give the '
                      f'path of an image file or one of {", ".join(PHOTOS)}.')
  try:
    with Image.open(path) as image:
      image.load()
      if image.mode.startswith('I;16'):
        photo = np.asarray(image, np.float32) / 65535.0
      elif image.mode in ('I', 'F'):
        raise DataError(f'{path} holds {image.mode!r} pixels (32-bit), which have no fixed '
                        'range; save it as an 8- or 16-bit image.')
      else:
        photo = np.asarray(image.convert('L'), np.float32) / 255.0
  except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unreadable or cut files
    raise DataError(f'cannot read {path} as an image ({e}); give a PNG, JPEG or TIFF '
                    'photo.') from e
  if photo.ndim != 2:
    raise DataError(f'{path} gives pixels of shape {photo.shape}, not one grey plane; save it '
                    'as a grey or RGB image.')
  return photo


def band_rows(height: int, name: str) -> tuple[int, int]:
  """The first and the end row of band 'train', 'validation' or 'test' of a photo ``height``
  rows tall."""
  lo, hi = REGIONS[name]
  return int(lo * height), int(hi * height)


def region(photo: np.ndarray, name: str) -> np.ndarray:
  """The band of rows of ``photo`` [H, W] for 'train', 'validation' or 'test'."""
  start, end = band_rows(photo.shape[0], name)
  return photo[start:end]


def crop_at(rng: np.random.Generator, band: np.ndarray, size: int
            ) -> tuple[np.ndarray, int, int]:
  """A random ``size``² crop of ``band`` [H, W] and its top-left corner (row, column)."""
  h, w = band.shape
  if h < size or w < size:
    raise ConfigError(f'crops of {size} px do not fit the {h}x{w} band; use a smaller --size.')
  r, c = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
  return band[r:r + size, c:c + size].copy(), r, c


def random_crop(rng: np.random.Generator, band: np.ndarray, size: int) -> np.ndarray:
  return crop_at(rng, band, size)[0]


def _ellipse(size, cy, cx, ry, rx, angle):
  y, x = np.mgrid[:size, :size].astype(np.float32)
  ca, sa = np.cos(angle), np.sin(angle)
  u, v = (x - cx) * ca + (y - cy) * sa, -(x - cx) * sa + (y - cy) * ca
  return (u / rx) ** 2 + (v / ry) ** 2  # < 1 inside


def _blob_region(rng, size, radius):
  """An irregular region around a random centre: a smoothed noise field above a threshold."""
  cy, cx = rng.uniform(0.15, 0.85, 2) * size
  d = _ellipse(size, cy, cx, radius * rng.uniform(0.6, 1.0), radius, rng.uniform(0, np.pi))
  noise = scipy.ndimage.gaussian_filter(rng.standard_normal((size, size)), radius / 3)
  noise /= noise.std() + 1e-8
  return d + 0.35 * noise < 1.0


def _hole(rng, image):
  size = image.shape[0]
  d = _ellipse(size, *(rng.uniform(0.15, 0.85, 2) * size), *rng.uniform(3, 12, 2),
               rng.uniform(0, np.pi))
  depth = np.clip(1.2 - d, 0, 1) ** 0.5  # soft edge
  out = image * (1 - 0.8 * depth) + 0.02 * depth
  return out, d < 1.0


def _stain(rng, image):
  mask = _blob_region(rng, image.shape[0], rng.uniform(8, 22))
  gain = rng.choice([rng.uniform(0.45, 0.7), rng.uniform(1.35, 1.7)])
  soft = scipy.ndimage.gaussian_filter(mask.astype(np.float32), 1.5) * mask
  return image * (1 + (gain - 1) * soft), mask


def _crack(rng, image):
  size = image.shape[0]
  n = int(rng.uniform(0.3, 0.7) * size)
  pos = rng.uniform(0.2, 0.8, 2) * size
  heading = rng.uniform(0, 2 * np.pi)
  line = np.zeros((size, size), bool)
  for _ in range(n):
    heading += rng.normal(0, 0.35)
    pos = pos + (np.sin(heading), np.cos(heading))
    r, c = int(round(pos[0])), int(round(pos[1]))
    if 0 <= r < size and 0 <= c < size:
      line[r, c] = True
  mask = scipy.ndimage.binary_dilation(line, iterations=int(rng.integers(1, 3)))
  return np.where(mask, image * rng.uniform(0.1, 0.35), image), mask


def _patch(rng, image, source):
  size = image.shape[0]
  side = int(rng.uniform(0.12, 0.25) * size)
  piece = np.rot90(random_crop(rng, source, side), k=int(rng.choice([1, 3])))
  r, c = rng.integers(int(0.1 * size), int(0.9 * size) - side, 2)
  out = image.copy()
  out[r:r + side, c:c + side] = piece
  mask = np.zeros_like(image, bool)
  mask[r:r + side, c:c + side] = True
  return out, mask


def _smudge(rng, image):
  mask = _blob_region(rng, image.shape[0], rng.uniform(8, 22))
  blurred = scipy.ndimage.gaussian_filter(image, rng.uniform(2.5, 5))
  return np.where(mask, blurred, image), mask


def _glint(rng, image):
  size = image.shape[0]
  d = _ellipse(size, *(rng.uniform(0.15, 0.85, 2) * size), *rng.uniform(4, 12, 2),
               rng.uniform(0, np.pi))
  light = rng.uniform(0.4, 0.7) * np.exp(-2.0 * d)
  mask = light > 0.05
  return np.where(mask, image + light, image), mask


def make_defect(rng: np.random.Generator, kind: str, image: np.ndarray,
                source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``image`` [S, S] with one defect of ``kind``: (image float32 in [0, 1], mask bool [S, S]).

  ``source``: the band the crop came from (``patch`` takes its piece there). Outside the mask
  the result equals ``image``.
  """
  if kind not in DEFECT_KINDS:
    raise ConfigError(f'unknown defect kind {kind!r}; choose from {DEFECT_KINDS}.')
  for _ in range(_MAX_TRIES):
    if kind == 'patch':
      out, mask = _patch(rng, image, source)
    else:
      out, mask = globals()[f'_{kind}'](rng, image)
    if MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA:
      return np.clip(np.where(mask, out, image), 0, 1).astype(np.float32), mask
  raise RuntimeError(f'no {kind} defect of allowed area in {_MAX_TRIES} draws.')


def _grey_levels(a: np.ndarray) -> np.ndarray:
  """``a`` in [0, 1] as the 8-bit grey levels that ``_save`` writes (float, 0..255)."""
  return np.round(np.clip(a, 0, 1) * 255)


def visible_change(good: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
  """Mean |image − good| over ``mask``, in grey levels of the 8-bit files written (0..255):
  how much of a defect there is to see. A smudge on a flat face or a turned piece that
  matches its place changes its mask by a grey level or two."""
  return float(np.abs(_grey_levels(image) - _grey_levels(good))[mask].mean())


def disjoint_crops(band: np.ndarray, size: int) -> int:
  """How many ``size``² crops fit side by side in ``band`` [H, W], none overlapping: more
  crops than that overlap, and a feature of the photo repeats in every crop that holds it."""
  return (band.shape[0] // size) * (band.shape[1] // size)


def _save(path: pathlib.Path, array: np.ndarray) -> None:
  Image.fromarray(_grey_levels(array).astype(np.uint8)).save(
      path, compress_level=1)


def write_dataset(root, photo: str = 'brick', eval_region: str = 'test', size: int = 128,
                  n_train: int = 300, n_test_good: int = 40, n_test_defect: int = 12,
                  seed: int = 0, defects: Sequence[str] = DEFECT_KINDS,
                  overwrite: bool = False) -> dict:
  """Writes an MVTec-layout dataset: train/good from the 'train' band; test/good and
  test/<defect> (+ ground_truth masks) from ``eval_region`` ('validation' or 'test').

  Returns the summary also written to ``root/photo_defects.json``. ``root/crops.csv`` lists
  every image written: ``split`` ('train' or 'test'), ``id`` as that split names it
  (``smudge/003.png``; a run's ``scores.csv`` names its test images so), ``kind``, the
  crop's top-left corner ``row``, ``col`` in the photo, and for a defect ``mask_area`` (the
  fraction of the crop) and ``mean_change`` (:func:`visible_change`). The bands are one crop
  tall or more, so crops of a band overlap: a feature of the photo is in every crop that
  holds its place.
  """
  if eval_region not in ('validation', 'test'):
    raise ConfigError(f"eval_region must be 'validation' or 'test', got {eval_region!r}.")
  unknown = [k for k in defects if k not in DEFECT_KINDS]
  if unknown:
    raise ConfigError(f'unknown defect kinds {unknown}; choose from {DEFECT_KINDS}.')
  photo = str(photo)
  full = load_photo(photo)  # before anything is written or removed
  train_band, eval_band = region(full, 'train'), region(full, eval_region)
  band_of = {'train': 'train', 'test': eval_region}  # the photo's band of each split
  offsets = {split: band_rows(full.shape[0], name)[0]  # each band's first row in the photo
             for split, name in band_of.items()}
  for name, band in (('train', train_band), (eval_region, eval_band)):
    if min(band.shape) < size:
      raise ConfigError(f'crops of {size} px do not fit the {name} band of the photo '
                        f'({band.shape[0]}x{band.shape[1]} of its {full.shape[0]}x'
                        f'{full.shape[1]}); use a smaller --size or a larger photo.')
  root = pathlib.Path(root)
  parts = [root / name for name in ('train', 'test', 'ground_truth')]
  if any(p.exists() for p in parts):
    if not overwrite:
      raise DataError(f'{root} already holds a dataset; choose another folder or overwrite.')
    for p in parts:
      shutil.rmtree(p, ignore_errors=True)
  areas: dict[str, list[float]] = {}
  changes: dict[str, list[float]] = {}
  rows = ['split,id,kind,row,col,mask_area,mean_change']

  def write(split, kind, n, band, with_defect):
    folder = root / split / kind
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
      band_id = list(REGIONS).index(band_of[split])
      kind_id = 0 if kind == 'good' else DEFECT_KINDS.index(kind) + 1
      rng = np.random.default_rng([seed, band_id, kind_id, i])
      crop, r, c = crop_at(rng, band, size)
      defect = ','
      if with_defect:
        good = crop
        crop, mask = make_defect(rng, kind, crop, band)
        (root / 'ground_truth' / kind).mkdir(parents=True, exist_ok=True)
        _save(root / 'ground_truth' / kind / f'{i:03d}_mask.png', mask.astype(np.float32))
        area, change = float(mask.mean()), visible_change(good, crop, mask)
        areas.setdefault(kind, []).append(area)
        changes.setdefault(kind, []).append(change)
        defect = f'{area:.6f},{change:.3f}'
      _save(folder / f'{i:03d}.png', crop)
      rows.append(f'{split},{kind}/{i:03d}.png,{kind},{offsets[split] + r},{c},{defect}')

  write('train', 'good', n_train, train_band, False)
  write('test', 'good', n_test_good, eval_band, False)
  for kind in defects:
    write('test', kind, n_test_defect, eval_band, True)
  summary = dict(photo=photo, eval_region=eval_region, size=size, n_train=n_train,
                 n_test_good=n_test_good, n_test_defect=n_test_defect, seed=seed,
                 regions=REGIONS, defects=list(defects),
                 disjoint_crops={split: disjoint_crops(band, size) for split, band in
                                 (('train', train_band), ('test', eval_band))},
                 mask_area={k: [min(v), float(np.mean(v)), max(v)] for k, v in areas.items()},
                 mean_change={k: [min(v), float(np.mean(v)), max(v)] for k, v in changes.items()})
  (root / 'photo_defects.json').write_text(json.dumps(summary, indent=1))
  (root / 'crops.csv').write_text('\n'.join(rows) + '\n')
  return summary


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True)
  p.add_argument('--photo', default='brick',
                 help=f'one of {", ".join(PHOTOS)} (bundled) or the path of a photo of your '
                 'own (read as grey)')
  p.add_argument('--region', default='test', choices=('validation', 'test'))
  p.add_argument('--size', type=int, default=128)
  p.add_argument('--n_train', type=int, default=300)
  p.add_argument('--n_test_good', type=int, default=40)
  p.add_argument('--n_test_defect', type=int, default=12)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--overwrite', action='store_true')
  a = p.parse_args(argv)
  try:
    s = write_dataset(a.out, a.photo, a.region, a.size, a.n_train, a.n_test_good,
                      a.n_test_defect, a.seed, overwrite=a.overwrite)
  except (ConfigError, DataError) as e:
    sys.exit(f'error: {e}')
  print(json.dumps({'mask_area': s['mask_area'], 'mean_change': s['mean_change']}))
  n_test = s['n_test_good'] + s['n_test_defect'] * len(s['defects'])
  print(f"the test band holds {s['disjoint_crops']['test']} disjoint crops of {s['size']} px "
        f"for {n_test} test images, the training band {s['disjoint_crops']['train']} for "
        f"{s['n_train']}: the crops overlap, so a feature of the photo is in every crop that "
        "holds its place (crops.csv says where each was cut).")


if __name__ == '__main__':
  main()
