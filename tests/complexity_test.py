"""Compressed lengths (host side): units, compressors, validation."""
import io
import math
import zlib

import numpy as np
from PIL import Image
import pytest

from vae_qc import complexity
from vae_qc.errors import DataError


def _images():
  """[3, 28, 28, 1] uint8: constant, a smooth ramp, uniform noise."""
  rng = np.random.default_rng(0)
  ramp = np.broadcast_to(np.arange(28, dtype=np.uint8)[None, :] * 9, (28, 28))
  return np.stack([np.zeros((28, 28), np.uint8), ramp,
                   rng.integers(0, 256, (28, 28), dtype=np.uint8)])[..., None]


def test_png_length_is_the_file_length_in_nats():
  images = _images()
  buf = io.BytesIO()
  Image.fromarray(images[1, ..., 0], 'L').save(buf, format='PNG', optimize=True,
                                               compress_level=9)
  nbytes = complexity.compressed_bytes(images, 'png')
  assert nbytes[1] == len(buf.getvalue())
  np.testing.assert_allclose(complexity.compressed_nats(images, 'png'),
                             nbytes * 8 * math.log(2.0))


def test_zlib_length():
  images = _images()
  assert complexity.compressed_bytes(images, 'zlib')[2] == len(
      zlib.compress(images[2].tobytes(), 9))


@pytest.mark.parametrize('compressor', complexity.COMPRESSORS)
def test_complexity_orders_simple_below_complex(compressor):
  nats = complexity.compressed_nats(_images(), compressor)
  assert nats[0] < nats[1] < nats[2]
  # Uniform noise is incompressible: at least ~log 256 nats a pixel (minus a little slack).
  assert nats[2] > 0.95 * 28 * 28 * math.log(256.0)


def test_rgb_images():
  rgb = np.repeat(_images(), 3, axis=-1)
  assert complexity.compressed_nats(rgb).shape == (3,)


@pytest.mark.parametrize('images', [np.zeros((2, 8, 8, 1), np.float32),
                                    np.zeros((8, 8, 1), np.uint8),
                                    np.zeros((2, 8, 8, 2), np.uint8)])
def test_bad_images_raise(images):
  with pytest.raises(DataError, match='uint8'):
    complexity.compressed_nats(images)


def test_unknown_compressor_raises():
  with pytest.raises(DataError, match='png, zlib'):
    complexity.compressed_nats(_images(), 'flif')
