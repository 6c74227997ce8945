"""Image folders: MVTec AD layout or free normal / abnormal / mask folders.

Layouts:

- MVTec AD (``load_mvtec``): ``ROOT/train/good/*``, ``ROOT/test/good/*``,
  ``ROOT/test/<defect>/*``, ``ROOT/ground_truth/<defect>/<stem>_mask.png``.
- Free folders (``load_dirs``, as anomalib's ``Folder``): ``normal_dir`` (label 0,
  defect type 'good'), ``abnormal_dir`` (label 1, defect type = folder name), ``mask_dir``.

Masks match images by file stem: ``<stem>_mask.<ext>`` or ``<stem>.<ext>``; non-zero pixels are
defects. A mask without an image, two masks for one image, or a mask whose size differs from
its image is a ``DataError`` (always, whatever ``on_bad_image`` says).

Files: PNG, JPEG, TIFF (first page), BMP; 8 bit per channel (scaled by 1/255) and 16-bit
grayscale (scaled by 1/65535). Pillow reads 16-bit colour PNGs at 8 bits per channel. Modes
L, 1, P, LA, RGB, RGBA, CMYK, ...: alpha is dropped, palettes are expanded. Images are
converted to ``channels``: gray to 3 channels by repetition; colour to 1 channel by luminance
(0.299 R + 0.587 G + 0.114 B), which is logged. Hidden files (names starting with '.') are
ignored; every other file must be a readable image of a supported format whose content
matches its extension. Bad files (unsupported extension, empty, corrupt, truncated, content
that does not match the extension, unsupported bit depth such as 32-bit integer or float,
smaller than the crop size) raise one ``DataError`` listing all of them with reasons when
``on_bad_image='error'``; with ``'skip'`` they are left out and listed in
``ImageSet.skipped``.

Sizes: ``size=None`` keeps images as they are (they must all have one size);
``size=S`` or ``(H, W)`` with ``resize_mode='resize'`` (bilinear, masks nearest) or
``'center_crop'``.
"""
from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
import pathlib

from absl import logging
import numpy as np
from PIL import Image

from vae_qc import progress
from vae_qc.errors import ConfigError, DataError

# Extension -> the Pillow format its content must have.
IMAGE_EXTENSIONS = {'.png': 'PNG', '.jpg': 'JPEG', '.jpeg': 'JPEG', '.tif': 'TIFF',
                    '.tiff': 'TIFF', '.bmp': 'BMP'}
MVTEC_LAYOUT = ('ROOT/train/good/*.png, ROOT/test/good/*.png, ROOT/test/<defect>/*.png, '
                'ROOT/ground_truth/<defect>/<stem>_mask.png')
_FORMATS = tuple(sorted(set(IMAGE_EXTENSIONS.values())))
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_GRAY_MODES = ('1', 'L', 'LA', 'La')
_COLOUR_MODES = ('P', 'PA', 'RGB', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr', 'LAB', 'HSV')
_16BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')

PathLike = str | os.PathLike


@dataclasses.dataclass
class ImageSet:
  """Images of one split, with labels and masks.

  Attributes:
    images: float32 [N, H, W, C] in [0, 1].
    masks: bool [N, H, W]; all False for good images and images without a mask file.
    has_mask: bool [N]; True where a mask file was read (pixel metrics should use only
      images with label 0 or has_mask).
    labels: int32 [N]; 0 good, 1 defect.
    defect_types: N names ('good' for good images).
    paths: N image paths.
    skipped: (path, reason) of every file left out under ``on_bad_image='skip'``.
  """
  images: np.ndarray
  masks: np.ndarray
  has_mask: np.ndarray
  labels: np.ndarray
  defect_types: list[str]
  paths: list[str]
  skipped: list[tuple[str, str]]

  def __len__(self) -> int:
    return len(self.paths)


class _BadFile(Exception):
  """A file cannot be used; ``args[0]`` is the reason."""


@dataclasses.dataclass
class _Entry:
  path: pathlib.Path
  label: int
  defect_type: str
  mask: pathlib.Path | None = None


def _files(directory: pathlib.Path, folders: bool = False) -> list[pathlib.Path]:
  """Non-hidden files (``folders``: sub-folders) of a folder, sorted by name; DataError if it
  cannot be listed."""
  try:
    return sorted(p for p in directory.iterdir()
                  if (p.is_dir() if folders else is_file_entry(p)) and not p.name.startswith('.'))
  except OSError as e:
    raise DataError(f'cannot list folder {directory}: {e.strerror or e}. Check that it is '
                    'readable (permissions) and re-run.') from None


def is_file_entry(path: pathlib.Path) -> bool:
  """A file, or a broken link (listed, so that reading it names it as a bad file)."""
  return path.is_file() or _is_broken_link(path)


def _is_broken_link(path: pathlib.Path) -> bool:
  return path.is_symlink() and not path.exists()


def list_images(directory: PathLike) -> list[pathlib.Path]:
  """Files of ``directory`` with a supported image extension, sorted by name."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise DataError(f'image folder {directory} does not exist or is not a folder.')
  return [p for p in _files(directory) if p.suffix.lower() in IMAGE_EXTENSIONS]


def _open(path: pathlib.Path) -> np.ndarray:
  """Pixels of an image file: [H, W] or [H, W, c] uint8/uint16. Raises _BadFile."""
  ext = path.suffix.lower()
  if ext not in IMAGE_EXTENSIONS:
    raise _BadFile(f'unsupported extension {path.suffix!r} '
                   f'(supported: {", ".join(IMAGE_EXTENSIONS)})')
  if _is_broken_link(path):
    raise _BadFile(f'a broken link (its target {os.readlink(path)} does not exist)')
  try:
    size = path.stat().st_size
  except OSError as e:
    raise _BadFile(f'cannot read ({e.strerror or e})') from None
  if size == 0:
    raise _BadFile('empty file (0 bytes)')
  try:
    with Image.open(path, formats=_FORMATS) as im:
      if im.format != IMAGE_EXTENSIONS[ext]:
        raise _BadFile(f'content is {im.format} but the extension is {path.suffix}')
      if im.mode in _16BIT_MODES:
        return np.asarray(im).astype(np.uint16)
      if im.mode not in _GRAY_MODES + _COLOUR_MODES:
        raise _BadFile(f'unsupported bit depth or pixel format (Pillow mode {im.mode!r}); '
                       'supported: 8 bit per channel and 16-bit grayscale')
      if im.mode in _GRAY_MODES:
        return np.asarray(im.convert('L'))
      return np.asarray(im.convert('RGB'))
  except _BadFile:
    raise
  except Image.UnidentifiedImageError:
    raise _BadFile('not a PNG, JPEG, TIFF or BMP image') from None
  except PermissionError:
    raise _BadFile('permission denied (check the file permissions)') from None
  except Exception as e:  # Pillow's decoders raise many types on corrupt data.
    raise _BadFile(f'cannot decode ({type(e).__name__}: {e})') from None


def _to_float(pixels: np.ndarray, channels: int) -> tuple[np.ndarray, bool]:
  """[H, W] or [H, W, 3] integers -> (float32 [H, W, channels], converted colour to gray)."""
  scale = 65535 if pixels.dtype == np.uint16 else 255
  image = pixels.astype(np.float32) / scale
  if image.ndim == 2:
    image = image[..., None]
    return (np.repeat(image, 3, -1) if channels == 3 else image), False
  if channels == 1:
    return (image @ _LUMA)[..., None], True
  return image, False


def _resize(plane: np.ndarray, height: int, width: int, resample) -> np.ndarray:
  return np.asarray(Image.fromarray(plane).resize((width, height), resample))


def _fit(image: np.ndarray, mask: np.ndarray | None, size, resize_mode):
  """Resizes or centre-crops image [H, W, C] and mask [H, W] to size (h, w)."""
  if size is None or image.shape[:2] == size:
    return image, mask
  (h, w), (height, width) = size, image.shape[:2]
  if resize_mode == 'resize':
    image = np.stack([_resize(image[..., c], h, w, Image.Resampling.BILINEAR)
                      for c in range(image.shape[-1])], -1)
    if mask is not None:
      mask = _resize(mask.astype(np.uint8), h, w, Image.Resampling.NEAREST).astype(bool)
    return image, mask
  if height < h or width < w:
    raise _BadFile(f'{width}x{height} is smaller than the centre crop {w}x{h}')
  top, left = (height - h) // 2, (width - w) // 2
  image = image[top:top + h, left:left + w]
  return image, None if mask is None else mask[top:top + h, left:left + w]


def read_image(path: PathLike, channels: int, size=None, resize_mode: str = 'resize') -> np.ndarray:
  """Reads one image file exactly as the folder loaders do (same conversion and fitting).

  Args:
    path: a PNG, JPEG, TIFF or BMP file.
    channels: 1 or 3 (colour images become luminance when 1, which is logged).
    size: None (the file's own size), an int or (height, width).
    resize_mode: 'resize' (bilinear) or 'center_crop', when ``size`` is given.

  Returns:
    float32 [H, W, channels] in [0, 1].

  Raises:
    DataError: naming the file and why it cannot be read.
  """
  size = _check_options(channels, size, resize_mode, 'error')
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'image file {path} does not exist.')
  try:
    image, converted = _to_float(_open(path), channels)
    image, _ = _fit(image, None, size, resize_mode)
  except _BadFile as e:
    raise DataError(f'cannot read image {path}: {e.args[0]}.') from None
  if converted:
    logging.info('Converted colour image %s to 1 channel (luminance) because channels=1.',
                 path)
  return image


def _check_channels(channels) -> None:
  if channels not in (1, 3):
    raise ConfigError(f'channels must be 1 or 3, got {channels!r}.')


def _check_options(channels, size, resize_mode, on_bad_image) -> tuple[int, int] | None:
  """Validates loader options; returns size as (h, w) or None."""
  _check_channels(channels)
  if resize_mode not in ('resize', 'center_crop'):
    raise ConfigError(f"resize_mode must be 'resize' or 'center_crop', got {resize_mode!r}.")
  if on_bad_image not in ('error', 'skip'):
    raise ConfigError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}.")
  if size is None:
    return None
  hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
  if len(hw) != 2 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in hw):
    raise ConfigError(f'size must be None, a positive int or (height, width), got {size!r}.')
  return int(hw[0]), int(hw[1])


def _folder_files(directory: pathlib.Path, what: str, expected: str) -> list[pathlib.Path]:
  """Files of an image folder; DataError if it is missing or empty."""
  if not directory.is_dir():
    raise DataError(f'{what} folder {directory} does not exist; {expected}.')
  files = _files(directory)
  if not files:
    raise DataError(f'{what} folder {directory} is empty; {expected}.')
  return files


def _match_masks(entries: list[_Entry], mask_dir: pathlib.Path) -> None:
  """Sets ``entry.mask`` from the files in ``mask_dir``.

  Raises:
    DataError: a mask matches no image or an image has two masks.
  """
  by_stem: dict[str, _Entry] = {}
  for entry in entries:
    if entry.path.stem in by_stem:
      raise DataError(f'images {by_stem[entry.path.stem].path} and {entry.path} share the '
                      f'stem {entry.path.stem!r}, so masks in {mask_dir} cannot be matched.')
    by_stem[entry.path.stem] = entry
  orphans = []
  for mask in _files(mask_dir):
    stem = mask.stem
    entry = by_stem.get(stem[:-len('_mask')]) if stem.endswith('_mask') else None
    entry = entry or by_stem.get(stem)
    if entry is None:
      orphans.append(mask)
    elif entry.mask is not None:
      raise DataError(f'image {entry.path} has two masks: {entry.mask} and {mask}.')
    else:
      entry.mask = mask
  if orphans:
    raise DataError(f'{len(orphans)} mask file(s) have no image (a mask <stem>_mask.png or '
                    f'<stem>.png needs an image <stem>.*): ' + ', '.join(map(str, orphans)))


def _read_mask(path: pathlib.Path) -> np.ndarray:
  pixels = _open(path)
  return pixels.any(-1) if pixels.ndim == 3 else pixels > 0


def _load(entries: list[_Entry], where: str, channels, size, resize_mode,
          on_bad_image) -> ImageSet:
  """Reads ``entries`` (described as ``where`` in messages) into an ImageSet."""
  images, masks, kept, bad, wrong_size, n_converted = [], [], [], [], [], 0
  for entry in progress.track(entries, len(entries), f'reading {where}'):
    try:
      pixels = _open(entry.path)
    except _BadFile as e:
      bad.append((str(entry.path), e.args[0]))
      continue
    mask = None
    if entry.mask is not None:
      try:
        mask = _read_mask(entry.mask)
      except _BadFile as e:
        bad.append((str(entry.mask), f'mask of {entry.path.name}: {e.args[0]}'))
        continue
      if mask.shape != pixels.shape[:2]:
        wrong_size.append(f'{entry.mask} is {mask.shape[1]}x{mask.shape[0]} but its image '
                          f'{entry.path} is {pixels.shape[1]}x{pixels.shape[0]}')
        continue
    image, converted = _to_float(pixels, channels)
    try:
      image, mask = _fit(image, mask, size, resize_mode)
    except _BadFile as e:
      bad.append((str(entry.path), e.args[0]))
      continue
    n_converted += converted
    images.append(image)
    masks.append(mask)
    kept.append(entry)
  if wrong_size:
    raise DataError('masks must have the size of their image: ' + '; '.join(wrong_size) + '.')
  if bad and on_bad_image == 'error':
    lines = '\n'.join(f'  {path}: {reason}' for path, reason in bad)
    raise DataError(f'{len(bad)} bad file(s) in {where}:\n{lines}\nFix or remove them, or set '
                    "on_bad_image='skip' to leave them out (they are then listed in "
                    'ImageSet.skipped).')
  if not images:
    raise DataError(f'no readable images in {where} ({len(bad)} bad files skipped).')
  shapes = {image.shape[:2] for image in images}
  if len(shapes) > 1:
    examples = {image.shape[:2]: entry.path for image, entry in zip(images, kept)}
    listing = ', '.join(f'{w}x{h} (e.g. {p})' for (h, w), p in sorted(examples.items()))
    raise DataError(f'images in {where} have different sizes: {listing}; set size to resize '
                    'or crop them to one size.')
  if n_converted:
    logging.info('Converted %d colour images of %s to 1 channel (luminance 0.299 R + 0.587 G '
                 '+ 0.114 B) because channels=1.', n_converted, where)
  if bad:
    logging.warning('Skipped %d bad files in %s (on_bad_image=skip).', len(bad), where)
  n_unmasked = sum(e.label == 1 and e.mask is None for e in kept)
  if n_unmasked:
    logging.warning('%d of %d defect images in %s have no mask.', n_unmasked,
                    sum(e.label == 1 for e in kept), where)
  h, w = shapes.pop()
  return ImageSet(
      images=np.stack(images).astype(np.float32, copy=False),
      masks=np.stack([np.zeros((h, w), bool) if m is None else m for m in masks]),
      has_mask=np.array([m is not None for m in masks], bool),
      labels=np.array([e.label for e in kept], np.int32),
      defect_types=[e.defect_type for e in kept],
      paths=[str(e.path) for e in kept],
      skipped=bad)


def load_mvtec(root: PathLike, split: str, channels: int, size=None,
               resize_mode: str = 'resize', on_bad_image: str = 'error') -> ImageSet:
  """Loads one split of a dataset in MVTec AD layout.

  Args:
    root: dataset root (``MVTEC_LAYOUT``).
    split: 'train' (``train/good`` only) or 'test' (every ``test/<class>``, 'good' is label 0,
      every other class label 1 with masks from ``ground_truth/<class>`` where present).
    channels: 1 or 3.
    size: None, an int or (height, width).
    resize_mode: 'resize' (bilinear) or 'center_crop'.
    on_bad_image: 'error' or 'skip'.

  Returns:
    The split as an ``ImageSet``.
  """
  size = _check_options(channels, size, resize_mode, on_bad_image)
  if split not in ('train', 'test'):
    raise ConfigError(f"split must be 'train' or 'test', got {split!r}.")
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f'dataset folder {root} does not exist; expected MVTec AD layout: '
                    f'{MVTEC_LAYOUT}.')
  split_dir = root / split
  if not split_dir.is_dir():
    raise DataError(f'{split_dir} does not exist; expected MVTec AD layout: {MVTEC_LAYOUT}.')
  if split == 'train':
    classes = ['good']
  else:
    classes = [p.name for p in _files(split_dir, folders=True)]
    if not classes or list_images(split_dir):
      raise DataError(f'{split_dir} must hold one folder per class (good, <defect>, ...) with '
                      f'the images; expected MVTec AD layout: {MVTEC_LAYOUT}.')
    gt_dir = root / 'ground_truth'
    extra = sorted(p for p in gt_dir.glob('*') if p.is_dir() and p.name not in classes)
    if extra:
      raise DataError(f'mask folder {extra[0]} has no image folder {split_dir / extra[0].name}.')
  entries = []
  for name in classes:
    files = _folder_files(split_dir / name, f'{split}/{name}',
                          f'expected MVTec AD layout: {MVTEC_LAYOUT}')
    folder_entries = [_Entry(p, 0 if name == 'good' else 1, name) for p in files]
    mask_dir = root / 'ground_truth' / name
    if split == 'test' and mask_dir.is_dir():
      _match_masks(folder_entries, mask_dir)
    entries += folder_entries
  return _load(entries, f'{root} ({split})', channels, size, resize_mode, on_bad_image)


def _as_list(dirs: PathLike | Sequence[PathLike] | None) -> list[pathlib.Path]:
  if dirs is None:
    return []
  if isinstance(dirs, (str, os.PathLike)):
    return [pathlib.Path(dirs)]
  return [pathlib.Path(d) for d in dirs]


def load_dirs(normal_dir: PathLike | Sequence[PathLike],
              abnormal_dir: PathLike | Sequence[PathLike] | None = None,
              mask_dir: PathLike | None = None, *, channels: int, size=None,
              resize_mode: str = 'resize', on_bad_image: str = 'error') -> ImageSet:
  """Loads free image folders (anomalib's ``Folder`` options).

  Args:
    normal_dir: folder(s) of good images (label 0, defect type 'good').
    abnormal_dir: folder(s) of defect images (label 1, defect type = folder name).
    mask_dir: folder of masks for the abnormal images, matched by stem.
    channels, size, resize_mode, on_bad_image: as in ``load_mvtec``.

  Returns:
    Normal images first, then abnormal ones, as an ``ImageSet``.
  """
  size = _check_options(channels, size, resize_mode, on_bad_image)
  normal, abnormal = _as_list(normal_dir), _as_list(abnormal_dir)
  if not normal:
    raise ConfigError('normal_dir is required.')
  if mask_dir is not None and not abnormal:
    raise ConfigError('mask_dir needs abnormal_dir: masks belong to abnormal images.')
  expected = f'it should hold image files ({", ".join(IMAGE_EXTENSIONS)})'
  entries = [_Entry(p, 0, 'good') for d in normal
             for p in _folder_files(d, 'normal', expected)]
  abnormal_entries = [_Entry(p, 1, d.name) for d in abnormal
                      for p in _folder_files(d, 'abnormal', expected)]
  if mask_dir is not None:
    mask_dir = pathlib.Path(mask_dir)
    if not mask_dir.is_dir():
      raise DataError(f'mask folder {mask_dir} does not exist or is not a folder.')
    _match_masks(abnormal_entries, mask_dir)
  where = ', '.join(str(d) for d in normal + abnormal)
  return _load(entries + abnormal_entries, where, channels, size, resize_mode, on_bad_image)
