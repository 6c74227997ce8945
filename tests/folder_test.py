"""Tests of the image-folder reader: formats, layouts, mask matching and bad inputs."""
import io
import logging
import pathlib
import struct
import tempfile
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
from PIL import Image
import pytest

from vae_qc.data import folder
from vae_qc.data import print_surfaces
from vae_qc.errors import ConfigError, DataError

H, W = 6, 8
LUMA = np.array([0.299, 0.587, 0.114])
GRAY = (np.arange(H * W).reshape(H, W) * 5).astype(np.uint8)
RGB = np.stack([GRAY, 255 - GRAY, np.full_like(GRAY, 77)], -1)
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [200, 200, 200]], np.uint8)
INDICES = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
GRAY16 = (np.arange(H * W).reshape(H, W) * 1300).astype(np.uint16)


def png16(path, array):
  """Writes a 16-bit PNG of [H, W] or [H, W, 3] uint16 (Pillow cannot write 16-bit colour)."""
  array = array.reshape(array.shape[0], array.shape[1], -1)
  height, width, channels = array.shape

  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))

  rows = b''.join(b'\0' + row.astype('>u2').tobytes() for row in array)
  header = struct.pack('>IIBBBBB', width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
  pathlib.Path(path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
                                 chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


def pil_image(mode):
  """(Pillow image of ``mode``, expected gray [H, W], expected RGB [H, W, 3]) in [0, 1]."""
  gray, rgb = GRAY / 255, RGB / 255
  if mode == 'L':
    return Image.fromarray(GRAY), gray, np.repeat(gray[..., None], 3, -1)
  if mode == 'LA':
    return Image.fromarray(np.stack([GRAY, 255 - GRAY], -1)), gray, np.repeat(
        gray[..., None], 3, -1)
  if mode == 'RGB':
    return Image.fromarray(RGB), rgb @ LUMA, rgb
  if mode == 'RGBA':
    return Image.fromarray(np.concatenate([RGB, GRAY[..., None]], -1)), rgb @ LUMA, rgb
  if mode == 'P':
    image = Image.fromarray(INDICES).convert('P')
    image.putpalette(PALETTE.reshape(-1).tolist())
    expected = PALETTE[INDICES] / 255
    return image, expected @ LUMA, expected
  if mode == 'I;16':
    gray16 = GRAY16 / 65535
    return Image.fromarray(GRAY16), gray16, np.repeat(gray16[..., None], 3, -1)
  raise ValueError(mode)


CASES = [('png', m) for m in ('L', 'LA', 'RGB', 'RGBA', 'P', 'I;16')] + [
    ('jpg', 'L'), ('jpeg', 'RGB')] + [('tif', m) for m in ('L', 'LA', 'RGB', 'RGBA', 'P', 'I;16')
                                      ] + [('tiff', 'RGB')] + [
    ('bmp', m) for m in ('L', 'RGB', 'P', 'RGBA')]


@pytest.mark.parametrize('ext,mode', CASES)
@pytest.mark.parametrize('channels', [1, 3])
def test_read_every_format_mode_and_depth(tmp_path, ext, mode, channels):
  image, gray, rgb = pil_image(mode)
  path = tmp_path / f'x.{ext}'
  image.save(path, **({'quality': 100, 'subsampling': 0} if ext in ('jpg', 'jpeg') else {}))
  array = folder.read_image(path, channels)
  assert array.shape == (H, W, channels) and array.dtype == np.float32
  expected = gray[..., None] if channels == 1 else rgb
  tolerance = 0.04 if ext in ('jpg', 'jpeg') else 1e-5 if mode == 'I;16' else 0.5 / 255 + 1e-6
  np.testing.assert_allclose(array, expected, atol=tolerance)


@pytest.mark.parametrize('channels', [1, 3])
def test_read_16bit_colour_png(tmp_path, channels):
  rgb16 = np.stack([GRAY16, 65535 - GRAY16, np.full_like(GRAY16, 30000)], -1)
  png16(tmp_path / 'c16.png', rgb16)
  array = folder.read_image(tmp_path / 'c16.png', channels)
  expected = rgb16 / 65535
  expected = expected @ LUMA if channels == 1 else expected
  # Pillow keeps the high byte of 16-bit colour PNGs.
  np.testing.assert_allclose(array.reshape(expected.shape), expected, atol=1 / 255 + 1e-6)


def test_read_16bit_gray_png_written_by_hand(tmp_path):
  png16(tmp_path / 'g16.png', GRAY16)
  np.testing.assert_allclose(folder.read_image(tmp_path / 'g16.png', 1)[..., 0],
                             GRAY16 / 65535, atol=1e-6)


def test_colour_to_gray_is_logged_once(tmp_path, caplog):
  for i in range(3):
    Image.fromarray(RGB).save(tmp_path / f'{i}.png')
  with caplog.at_level(logging.INFO):
    data = folder.load_dirs(tmp_path, channels=1)
  assert data.images.shape == (3, H, W, 1)
  messages = [r.getMessage() for r in caplog.records if 'to 1 channel' in r.getMessage()]
  assert len(messages) == 1 and 'Converted 3 colour images' in messages[0]
  with caplog.at_level(logging.INFO):
    caplog.clear()
    folder.load_dirs(tmp_path, channels=3)
  assert not [r for r in caplog.records if 'to 1 channel' in r.getMessage()]


def save_gray(path, array=GRAY):
  Image.fromarray(array).save(path)


def make_mvtec(root, mask_name='{stem}_mask.png'):
  for split, cls, n in (('train', 'good', 3), ('test', 'good', 2), ('test', 'crack', 2),
                        ('test', 'hole', 1)):
    (root / split / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      save_gray(root / split / cls / f'{i:03d}.png')
  for cls, n in (('crack', 2), ('hole', 1)):
    (root / 'ground_truth' / cls).mkdir(parents=True)
    for i in range(n):
      mask = np.zeros((H, W), np.uint8)
      mask[i, :3] = 255
      save_gray(root / 'ground_truth' / cls / mask_name.format(stem=f'{i:03d}'), mask)


@pytest.mark.parametrize('mask_name', ['{stem}_mask.png', '{stem}.png', '{stem}_mask.bmp'])
def test_mvtec_layout_and_mask_matching(tmp_path, mask_name):
  make_mvtec(tmp_path, mask_name)
  train = folder.load_mvtec(tmp_path, 'train', 1)
  assert train.images.shape == (3, H, W, 1) and not train.labels.any()
  assert train.defect_types == ['good'] * 3 and not train.masks.any()
  test = folder.load_mvtec(tmp_path, 'test', 3)
  assert test.images.shape == (5, H, W, 3)
  assert test.defect_types == ['crack', 'crack', 'good', 'good', 'hole']
  np.testing.assert_array_equal(test.labels, [1, 1, 0, 0, 1])
  np.testing.assert_array_equal(test.has_mask, [True, True, False, False, True])
  assert test.masks.shape == (5, H, W) and test.masks.dtype == bool
  assert test.masks[1, 1, :3].all() and test.masks[1].sum() == 3
  assert not test.masks[2:4].any()
  assert test.paths[0].endswith('test/crack/000.png') and test.skipped == []


def test_mvtec_generated_dataset_round_trip(tmp_path):
  print_surfaces.write_dataset(tmp_path, size=64, n_train=2, n_test_good=2, n_test_defect=1,
                               defects=('blob', 'warping'))
  test = folder.load_mvtec(tmp_path, 'test', 1)
  _, mask = print_surfaces.generate_defect(
      print_surfaces.image_rng(0, 'test', 'warping', 0), 'warping', 64, 1)
  np.testing.assert_array_equal(test.masks[test.defect_types.index('warping')], mask)
  assert test.has_mask.sum() == 2


def test_load_dirs_with_masks(tmp_path):
  for name in ('normal', 'scratch', 'masks'):
    (tmp_path / name).mkdir()
  save_gray(tmp_path / 'normal' / 'a.png')
  save_gray(tmp_path / 'scratch' / 'b.jpg')
  save_gray(tmp_path / 'scratch' / 'c.tif')
  mask = np.zeros((H, W), np.uint8)
  mask[2, 2] = 1  # Any non-zero value is a defect.
  save_gray(tmp_path / 'masks' / 'b.png', mask)
  data = folder.load_dirs(tmp_path / 'normal', tmp_path / 'scratch', tmp_path / 'masks',
                          channels=1)
  assert data.defect_types == ['good', 'scratch', 'scratch']
  np.testing.assert_array_equal(data.labels, [0, 1, 1])
  np.testing.assert_array_equal(data.has_mask, [False, True, False])
  assert data.masks[1].sum() == 1 and data.masks[1, 2, 2]


def test_resize_and_center_crop(tmp_path):
  image = np.zeros((10, 12), np.uint8)
  image[3:7, 4:8] = 255
  save_gray(tmp_path / 'a.png', image)
  save_gray(tmp_path / 'b.png', np.zeros((20, 20), np.uint8))
  with pytest.raises(DataError, match='different sizes'):
    folder.load_dirs(tmp_path, channels=1)
  resized = folder.load_dirs(tmp_path, channels=1, size=5)
  assert resized.images.shape == (2, 5, 5, 1)
  cropped = folder.load_dirs(tmp_path, channels=1, size=(4, 4), resize_mode='center_crop')
  np.testing.assert_array_equal(cropped.images[0, ..., 0], 1.0)
  with pytest.raises(DataError, match='smaller than the centre crop'):
    folder.load_dirs(tmp_path, channels=1, size=(15, 15), resize_mode='center_crop')


def test_resize_masks_nearest(tmp_path):
  for name in ('n', 'd', 'm'):
    (tmp_path / name).mkdir()
  save_gray(tmp_path / 'n' / 'a.png', np.zeros((16, 16), np.uint8))
  save_gray(tmp_path / 'd' / 'b.png', np.zeros((16, 16), np.uint8))
  mask = np.zeros((16, 16), np.uint8)
  mask[:8] = 255
  save_gray(tmp_path / 'm' / 'b_mask.png', mask)
  data = folder.load_dirs(tmp_path / 'n', tmp_path / 'd', tmp_path / 'm', channels=1, size=8)
  assert data.masks.shape == (2, 8, 8)
  assert data.masks[1, :4].all() and not data.masks[1, 4:].any()


def png_bytes(size=16):
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size), np.uint8)).save(
      buffer, 'PNG')
  return buffer.getvalue()


def write_bad_files(directory):
  """Writes one bad file of every kind; returns {file name: expected reason fragment}."""
  (directory / 'corrupt.png').write_bytes(b'this is not an image at all' * 10)
  (directory / 'truncated.png').write_bytes(png_bytes(64)[:600])
  (directory / 'empty.png').write_bytes(b'')
  buffer = io.BytesIO()
  Image.fromarray(GRAY).save(buffer, 'JPEG')
  (directory / 'jpeg_named.png').write_bytes(buffer.getvalue())
  (directory / 'notes.txt').write_text('hello')
  Image.fromarray(GRAY.astype(np.float32)).save(directory / 'float.tif')
  Image.fromarray(GRAY.astype(np.int32)).save(directory / 'int32.tif')
  return {'corrupt.png': 'not a PNG, JPEG, TIFF or BMP image',
          'truncated.png': 'cannot decode',
          'empty.png': 'empty file',
          'jpeg_named.png': 'content is JPEG but the extension is .png',
          'notes.txt': "unsupported extension '.txt'",
          'float.tif': "mode 'F'",
          'int32.tif': "mode 'I'"}


def test_bad_files_error_lists_all_and_skip_counts(tmp_path):
  expected = write_bad_files(tmp_path)
  for i in range(2):
    save_gray(tmp_path / f'good{i}.png')
  (tmp_path / '.DS_Store').write_bytes(b'\0\1')  # Hidden files are ignored.
  with pytest.raises(DataError) as error:
    folder.load_dirs(tmp_path, channels=1)
  message = str(error.value)
  assert f'{len(expected)} bad file(s)' in message and "on_bad_image='skip'" in message
  for name, reason in expected.items():
    line = next(l for l in message.splitlines() if l.strip().startswith(str(tmp_path / name)))
    assert reason in line, (name, line)
  data = folder.load_dirs(tmp_path, channels=1, on_bad_image='skip')
  assert len(data) == 2 and [pathlib.Path(p).name for p in data.paths] == ['good0.png',
                                                                          'good1.png']
  assert sorted(pathlib.Path(p).name for p, _ in data.skipped) == sorted(expected)


@pytest.mark.parametrize('name', ['corrupt.png', 'truncated.png', 'empty.png',
                                  'jpeg_named.png', 'notes.txt', 'float.tif', 'int32.tif'])
def test_read_image_bad_file_names_it(tmp_path, name):
  write_bad_files(tmp_path)
  with pytest.raises(DataError, match=name):
    folder.read_image(tmp_path / name, 1)


def test_only_bad_files_in_skip_mode(tmp_path):
  (tmp_path / 'a.png').write_bytes(b'')
  with pytest.raises(DataError, match='no readable images'):
    folder.load_dirs(tmp_path, channels=1, on_bad_image='skip')


def test_unreadable_mask_is_a_bad_file(tmp_path):
  make_mvtec(tmp_path)
  (tmp_path / 'ground_truth' / 'hole' / '000_mask.png').write_bytes(b'garbage')
  with pytest.raises(DataError, match='000_mask.png: mask of 000.png'):
    folder.load_mvtec(tmp_path, 'test', 1)
  data = folder.load_mvtec(tmp_path, 'test', 1, on_bad_image='skip')
  assert 'hole' not in data.defect_types and len(data.skipped) == 1


def test_mask_without_image(tmp_path):
  make_mvtec(tmp_path)
  save_gray(tmp_path / 'ground_truth' / 'crack' / '007_mask.png')
  with pytest.raises(DataError, match='007_mask.png'):
    folder.load_mvtec(tmp_path, 'test', 1)


def test_mask_folder_without_image_folder(tmp_path):
  make_mvtec(tmp_path)
  (tmp_path / 'ground_truth' / 'dent').mkdir()
  with pytest.raises(DataError, match='dent'):
    folder.load_mvtec(tmp_path, 'test', 1)


def test_two_masks_for_one_image(tmp_path):
  make_mvtec(tmp_path)
  save_gray(tmp_path / 'ground_truth' / 'crack' / '000.png')
  with pytest.raises(DataError, match='two masks'):
    folder.load_mvtec(tmp_path, 'test', 1)


def test_wrong_size_mask(tmp_path):
  make_mvtec(tmp_path)
  save_gray(tmp_path / 'ground_truth' / 'crack' / '001_mask.png', np.zeros((3, 3), np.uint8))
  with pytest.raises(DataError, match=r'001_mask.png is 3x3 but its image .*001.png is 8x6'):
    folder.load_mvtec(tmp_path, 'test', 1, on_bad_image='skip')


def test_empty_and_missing_folders(tmp_path):
  with pytest.raises(DataError, match=f'{tmp_path / "nope"}.*does not exist.*MVTec AD layout'):
    folder.load_mvtec(tmp_path / 'nope', 'train', 1)
  with pytest.raises(DataError, match='train does not exist.*ROOT/train/good'):
    folder.load_mvtec(tmp_path, 'train', 1)
  (tmp_path / 'train' / 'good').mkdir(parents=True)
  with pytest.raises(DataError, match='train/good is empty'):
    folder.load_mvtec(tmp_path, 'train', 1)
  (tmp_path / 'test').mkdir()
  with pytest.raises(DataError, match='one folder per class'):
    folder.load_mvtec(tmp_path, 'test', 1)
  with pytest.raises(DataError, match='missing'):
    folder.load_dirs(tmp_path / 'missing', channels=1)
  with pytest.raises(DataError, match='normal folder .* is empty'):
    folder.load_dirs(tmp_path / 'train' / 'good', channels=1)
  with pytest.raises(DataError, match='does not exist'):
    folder.read_image(tmp_path / 'nothing.png', 1)
  with pytest.raises(DataError, match='does not exist'):
    folder.list_images(tmp_path / 'missing')


def test_images_directly_in_test_folder(tmp_path):
  make_mvtec(tmp_path)
  save_gray(tmp_path / 'test' / 'loose.png')
  with pytest.raises(DataError, match='one folder per class'):
    folder.load_mvtec(tmp_path, 'test', 1)


@pytest.mark.parametrize('kwargs', [dict(channels=2), dict(resize_mode='stretch'),
                                    dict(on_bad_image='ignore'), dict(size=(3, 0))])
def test_bad_options(tmp_path, kwargs):
  save_gray(tmp_path / 'a.png')
  with pytest.raises(ConfigError):
    folder.load_dirs(tmp_path, **{'channels': 1, **kwargs})


def test_list_images(tmp_path):
  for name in ('b.PNG', 'a.jpeg', 'c.txt', '.hidden.png'):
    (tmp_path / name).write_bytes(b'x')
  assert [p.name for p in folder.list_images(tmp_path)] == ['a.jpeg', 'b.PNG']


SEEDS = {'png': png_bytes(8)}
for _fmt, _ext in (('JPEG', 'jpg'), ('TIFF', 'tif'), ('BMP', 'bmp')):
  _buffer = io.BytesIO()
  Image.fromarray(GRAY).save(_buffer, _fmt)
  SEEDS[_ext] = _buffer.getvalue()


@st.composite
def damaged_files(draw):
  """(extension, bytes): random bytes, or a valid image with bytes overwritten or cut."""
  ext = draw(st.sampled_from(sorted(SEEDS)))
  if draw(st.booleans()):
    return ext, draw(st.binary(max_size=300))
  data = bytearray(SEEDS[ext])
  for _ in range(draw(st.integers(0, 8))):
    data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
  return ext, bytes(data[:draw(st.integers(0, len(data)))])


@pytest.mark.filterwarnings('ignore::UserWarning')  # Pillow warns about corrupt TIFF tags.
@settings(max_examples=150, deadline=None, derandomize=True)
@given(damaged_files())
def test_reader_raises_only_data_error(case):
  ext, data = case
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / f'x.{ext}'
    path.write_bytes(data)
    for call in (lambda: folder.read_image(path, 3),
                 lambda: folder.load_dirs(tmp, channels=1),
                 lambda: folder.load_dirs(tmp, channels=1, on_bad_image='skip', size=4)):
      try:
        result = call()
      except DataError:
        continue
      assert np.isfinite(result.images if hasattr(result, 'images') else result).all()
