"""Image complexity as a lossless compressed length, in nats (host side, numpy + PIL/zlib).

Serrà et al. (ICLR 2020) correct a likelihood score by the image's complexity,
S(x) = −log P(x) − L(x), where L(x) is the length of x under a generic lossless compressor:
−L is the log-probability of x under the compressor's implied distribution 2^(−bits), so S is
a log-likelihood ratio between the generic "model" and ours. Both terms must be code lengths of
the same 8-bit image in the same unit; here nats: L = 8 · bytes · ln 2.

Compressors: 'png' (PIL, optimize=True, compress_level=9; the whole file, headers included:
they are part of the code and add a near-constant ~60 bytes) and 'zlib' (level 9 on the raw
row-major bytes, with its 6-byte wrapper).
"""
from __future__ import annotations

import io
import math
import zlib

import numpy as np
from PIL import Image

from vae_qc.errors import DataError

COMPRESSORS = ('png', 'zlib')
NATS_PER_BYTE = 8.0 * math.log(2.0)


def _png_bytes(image: np.ndarray) -> int:
  mode = 'L' if image.shape[-1] == 1 else 'RGB'
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if mode == 'L' else image, mode).save(
      buf, format='PNG', optimize=True, compress_level=9)
  return buf.tell()


def _zlib_bytes(image: np.ndarray) -> int:
  return len(zlib.compress(np.ascontiguousarray(image).tobytes(), 9))


_BYTES = {'png': _png_bytes, 'zlib': _zlib_bytes}


def compressed_bytes(images: np.ndarray, compressor: str = 'png') -> np.ndarray:
  """Compressed length in bytes of each image. images uint8 [B, H, W, C], C in {1, 3} -> [B]."""
  if compressor not in _BYTES:
    raise DataError(f'unknown compressor {compressor!r}; choose one of {", ".join(COMPRESSORS)}.')
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError('complexity needs 8-bit images uint8 [B, H, W, C] with C in {1, 3}; got '
                    f'{images.dtype} {images.shape}.')
  return np.array([_BYTES[compressor](im) for im in images], np.int64)


def compressed_nats(images: np.ndarray, compressor: str = 'png') -> np.ndarray:
  """L(x) = 8 · bytes · ln 2: the compressed length in nats. uint8 [B, H, W, C] -> float64 [B]."""
  return compressed_bytes(images, compressor).astype(np.float64) * NATS_PER_BYTE
