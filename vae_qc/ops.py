"""XLA:CPU-friendly forms of the model's layers, with the same values as the plain ones.

Each "nearest up-sample ×2 → conv 3×3" is computed by default in its sub-pixel form
(``impl='subpixel'``): output pixel (2i + a, 2j + b) of the up-sampled convolution only sees
input pixels i − 1 + a .. i + a and j − 1 + b .. j + b of the small image, so the 3×3 kernel
folds (at run time, by summing taps) into four 2×2 "phase" kernels applied to the small
image, and the four phase outputs interleave into the large one. The result equals the plain
form's up to float rounding with 4/9 of the multiply-adds, and the parameters are the same
3×3 kernels, so checkpoints are interchangeable between the two.

The same setting chooses forms that XLA:CPU runs faster, with the same values, elsewhere:
the last convolution (C = 1 or 3 outputs) as a matrix product and a shifted sum, kernel
gradients of 3×3 convolutions as matrix products (custom VJPs), and max-pooling as a reshape
and a max. ``impl='plain'`` is the layer as written (XLA's convolutions, up-sampling by
repetition), the reference the tests compare with. Measurements: experiments/benchmark.py.

Shapes: images NHWC ``[N, H, W, C]``, kernels HWIO ``[3, 3, I, O]``.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

IMPLS = ('subpixel', 'plain')
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Max-pooling 2×2, stride 2: [N, H, W, C] -> [N, H/2, W/2, C] (H, W even).

  A reshape and a max rather than ``nn.max_pool``: the same values, but its gradient is
  element-wise (an equality mask) instead of XLA's select-and-scatter, which is several
  times slower on the CPU. (With ties, the gradient is shared among the tied inputs.)
  """
  n, h, w, c = x.shape
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def upsample_nearest(x: jax.Array) -> jax.Array:
  """Nearest-neighbour up-sampling ×2: [N, H, W, C] -> [N, 2H, 2W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DIMS)


def _conv3x3_by_taps(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """SAME 3×3 convolution as one matrix product and a shifted sum (for few outputs).

  z = kernelᵀ · xᵀ gives each pixel's contribution to the 9 tap positions, tap-major
  [9, O, N, H, W]; y[n, u, v] = Σ_{ky, kx} z[(ky, kx), n, u + ky − 1, v + kx − 1] (zero
  outside the image). XLA:CPU's convolution with O = 1 runs at a few GFLOP/s, the product at
  full speed, and the tap-major layout keeps the shifted sum on contiguous rows.
  """
  n, h, w, i = x.shape
  o = kernel.shape[-1]
  k = kernel.transpose(0, 1, 3, 2).reshape(9 * o, i)  # [(ky, kx, O), I]
  z = lax.dot_general(k, x.reshape(-1, i), (((1,), (1,)), ((), ())))  # [9·O, N·H·W]
  z = jnp.pad(z.reshape(9, o, n, h, w), ((0, 0), (0, 0), (0, 0), (1, 1), (1, 1)))
  taps = [z[3 * ky + kx, :, :, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)]
  return sum(taps[1:], taps[0]).transpose(1, 2, 3, 0)  # [O, N, H, W] -> [N, H, W, O]


def _shifted_windows(a: jax.Array, flip: bool = False) -> jax.Array:
  """The 9 shifted copies of a 3×3 SAME convolution, channel-major: a [N, H, W, C] ->
  [9 (ky, kx), C, N, H, W] with window (ky, kx) at (u, v) = a[n, u + ky − 1, v + kx − 1]
  (``flip``: a[n, u − ky + 1, v − kx + 1]), zero outside the image."""
  _, h, w, _ = a.shape
  padded = jnp.pad(a.transpose(3, 0, 1, 2), ((0, 0), (0, 0), (1, 1), (1, 1)))  # [C, N, H+2, W+2]
  start = (lambda k: 2 - k) if flip else (lambda k: k)
  return jnp.stack([padded[:, :, start(ky):start(ky) + h, start(kx):start(kx) + w]
                    for ky in range(3) for kx in range(3)])


def _with_kernel_grad(forward: Callable[[jax.Array, jax.Array], jax.Array],
                      kernel_grad: Callable[[jax.Array, jax.Array], jax.Array]):
  """A SAME 3×3 convolution ``forward(x, kernel)`` whose gradient is XLA's for x and
  ``kernel_grad(x, dy)`` -> dk [3, 3, I, O] for the kernel (reverse mode only)."""
  conv = jax.custom_vjp(forward)

  def fwd(x, kernel):
    return forward(x, kernel), (x, kernel)

  def bwd(residuals, dy):
    x, kernel = residuals
    dx = jax.vjp(lambda x: _conv3x3(x, kernel), x)[1](dy)[0]
    return dx, kernel_grad(x, dy).astype(kernel.dtype)

  conv.defvjp(fwd, bwd)
  return conv


def _kernel_grad_by_shifted_dy(x: jax.Array, dy: jax.Array) -> jax.Array:
  """dk as one matrix product of the 9 shifted copies of the thin dy with x.

  dk[ky, kx, i, o] = Σ_{n, u, v} dy[n, u − ky + 1, v − kx + 1, o] · x[n, u, v, i] (dy zero
  outside the image). XLA's own kernel gradient transposes x to [I, H, W, N] first, which
  for the decoder's last convolution (O = C = 1 or 3) costs far more than the product.
  """
  i, o = x.shape[-1], dy.shape[-1]
  shifted = _shifted_windows(dy, flip=True)  # [9, O, N, H, W]
  dk = jnp.dot(shifted.reshape(9 * o, -1), x.reshape(-1, i))  # [(ky, kx, O), I]
  return dk.reshape(3, 3, o, i).transpose(0, 1, 3, 2)


def _kernel_grad_by_im2col(x: jax.Array, dy: jax.Array) -> jax.Array:
  """dk as one matrix product: the transposed im2col of x, tap-major [(ky, kx, I), N·H·W],
  times dy [N·H·W, O] (XLA:CPU runs products on every core, and its own kernel-gradient
  convolution transposes x first anyway)."""
  i, o = x.shape[-1], dy.shape[-1]
  cols = _shifted_windows(x)  # [9, I, N, H, W]
  dk = jnp.dot(cols.reshape(9 * i, -1), dy.reshape(-1, o))  # [(ky, kx, I), O]
  return dk.reshape(3, 3, i, o)


# Few outputs: the forward pass is a product and a shifted sum, and so is the kernel gradient.
_conv3x3_few_outputs = _with_kernel_grad(_conv3x3_by_taps, _kernel_grad_by_shifted_dy)
# Otherwise: XLA's convolution, the kernel gradient as a product.
_conv3x3_product_grad = _with_kernel_grad(_conv3x3, _kernel_grad_by_im2col)

# Up to this many output channels, conv3x3 and its kernel gradient are the products above.
_FEW_OUTPUTS = 4


def conv3x3(x: jax.Array, kernel: jax.Array, impl: str = 'subpixel') -> jax.Array:
  """SAME 3×3 convolution (no bias), as ``nn.Conv``: x [N, H, W, I], kernel [3, 3, I, O].

  ``impl`` 'subpixel' (the fast forms): with at most ``_FEW_OUTPUTS`` outputs, a matrix
  product and a shifted sum; otherwise XLA's convolution with the kernel gradient as a
  matrix product. 'plain': XLA's convolution and its gradients. (The custom gradients are
  reverse-mode only: ``jax.jvp`` through the 'subpixel' model is not supported.)
  """
  if impl == 'subpixel' and kernel.shape[-1] <= _FEW_OUTPUTS:
    return _conv3x3_few_outputs(x, kernel)
  if impl == 'subpixel':
    return _conv3x3_product_grad(x, kernel)
  return _conv3x3(x, kernel)


def _fold_taps(kernel: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """Folds the 3 taps along ``axis`` into the 2 taps of each output phase.

  Along one axis, up-sampled output 2i + 0 sees small-image pixels (i − 1, i) with taps
  (k0, k1 + k2), and output 2i + 1 sees (i, i + 1) with taps (k0 + k1, k2).
  """
  k0, k1, k2 = (lax.index_in_dim(kernel, t, axis) for t in range(3))
  return jnp.concatenate([k0, k1 + k2], axis), jnp.concatenate([k0 + k1, k2], axis)


def phase_kernels(kernel: jax.Array) -> jax.Array:
  """A 3×3 kernel [3, 3, I, O] -> its four 2×2 phase kernels [2 (a), 2 (b), 2, 2, I, O].

  Phase (a, b) makes up-sampled outputs (2i + a, 2j + b) from small-image rows
  (i − 1 + a, i + a) and columns (j − 1 + b, j + b).
  """
  return jnp.stack([jnp.stack(_fold_taps(rows, 1)) for rows in _fold_taps(kernel, 0)])


# Zero padding (before, after) of the small image for phase 0 and phase 1 along one axis.
_PHASE_PADDING = ((1, 0), (0, 1))


def upsample_conv3x3(x: jax.Array, kernel: jax.Array, impl: str = 'subpixel') -> jax.Array:
  """conv3x3(upsample_nearest(x), kernel), without bias: [N, H, W, I] -> [N, 2H, 2W, O].

  'subpixel': four 2×2 convolutions of the small image, phase (a, b) padded by
  ``_PHASE_PADDING[a]`` rows and ``_PHASE_PADDING[b]`` columns, give [N, H, W, O] each; they
  interleave as [N, H, 2 (a), W, 2 (b), O] = [N, 2H, 2W, O]. (Four convolutions with one
  pixel of padding each, rather than one with four times the filters on a twice-padded image:
  XLA:CPU's YNNPACK convolutions take only the former, and the latter's kernel gradient is
  ~10× slower with its Eigen convolutions too.)
  'plain': up-sample, then convolve.
  """
  if impl == 'plain':
    return conv3x3(upsample_nearest(x), kernel, 'plain')
  n, h, w, _ = x.shape
  phases = phase_kernels(kernel)
  rows = []
  for a in (0, 1):
    cols = [lax.conv_general_dilated(x, phases[a, b], (1, 1),
                                     (_PHASE_PADDING[a], _PHASE_PADDING[b]),
                                     dimension_numbers=_DIMS) for b in (0, 1)]
    rows.append(jnp.stack(cols, axis=3))  # [N, H, W, 2 (b), O]
  return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, -1)  # [N, H, 2 (a), W, 2 (b), O]


class UpsampleConv(nn.Module):
  """[Nearest up-sample ×2 →] conv 3×3 SAME with bias; parameters named and shaped (and
  initialised) exactly as ``nn.Conv(features, (3, 3))``'s: kernel [3, 3, I, O], bias [O].

  x [N, H, W, I] -> [N, 2H, 2W, O] (``upsample``) or [N, H, W, O].
  """
  features: int
  upsample: bool = False
  impl: str = 'subpixel'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    if self.upsample:
      y = upsample_conv3x3(x, kernel, self.impl)
    else:
      y = conv3x3(x, kernel, self.impl)
    return y + bias
