"""The paper's VGG-like convolutional VAE (Tonnaer et al., 2019) in flax.linen.

Encoder block(f): conv 3×3 (f) → ReLU → max-pool 2×2/2 → BatchNorm; then flatten →
Dense(fc) → BN → ReLU → Dense(2·latent) = (mean, log σ) of q(z|x).
Decoder: Dense(fc) → BN → ReLU → Dense(h·w·f_last) → BN → ReLU → reshape; per block, filters
reversed: nearest up-sample ×2 → conv 3×3 (f) → ReLU → BN; then conv 3×3 (C) → the
likelihood's location (sigmoid mean, or logits).

Each "nearest up-sample ×2 → conv 3×3" is computed by default in its sub-pixel form
(``ModelConfig.upsample_impl='subpixel'``): output pixel (2i + a, 2j + b) of the up-sampled
convolution only sees input pixels i − 1 + a .. i + a and j − 1 + b .. j + b of the small
image, so the 3×3 kernel folds (at run time, by summing taps) into four 2×2 "phase" kernels
applied to the small image, and the four phase outputs interleave into the large one. The
result equals the plain form's up to float rounding with 4/9 of the multiply-adds, and the
parameters are the same 3×3 kernels, so checkpoints are interchangeable between the two.

The same setting chooses forms that XLA:CPU runs faster, with the same values, elsewhere:
the last convolution (C = 1 or 3 outputs) as a matrix product and a shifted sum, kernel
gradients of 3×3 convolutions as matrix products (custom VJPs), and max-pooling as a reshape
and a max. ``upsample_impl='plain'`` is the model as written (XLA's convolutions, up-sampling
by repetition), the reference the tests compare with. Measurements: experiments/benchmark.py.

The model is used through pure functions of ``variables`` (``{'params', 'batch_stats'}``):
:func:`encode`, :func:`decode`, and :func:`model_fns`, which binds them for the estimators.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from vae_qc import likelihoods
from vae_qc.errors import ConfigError

Variables = Any  # {'params': ..., 'batch_stats': ...}

UPSAMPLE_IMPLS = ('subpixel', 'plain')
_DIMS = ('NHWC', 'HWIO', 'NHWC')


class Posterior(NamedTuple):
  """Diagonal Gaussian q(z|x)."""
  mean: jax.Array  # [..., B, L]
  log_scale: jax.Array  # [..., B, L]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture. ``image_shape`` is (H, W, C) with H and W divisible by 2**len(blocks)."""
  image_shape: tuple[int, int, int] = (28, 28, 1)
  blocks: tuple[int, ...] = (32, 64)
  fc: int = 64
  latent: int = 2
  norm: str = 'batch'  # 'batch' (paper) or 'none'
  likelihood: str = 'gaussian_fixed'
  sigma: float = likelihoods.PAPER_SIGMA  # σ of 'gaussian_fixed'
  init_log_scale: float = math.log(0.1)  # start of a learned log σ
  min_log_scale: float = math.log(1e-3)  # floor of a learned log σ (densities stay finite)
  bn_momentum: float = 0.9  # flax convention; PyTorch's momentum=0.1
  # 'subpixel' (the fast forms) or 'plain' (as written); same parameters and outputs.
  upsample_impl: str = 'subpixel'

  def __post_init__(self):
    # Tuples (from lists too): the config is hashable, a static argument of compiled functions.
    object.__setattr__(self, 'image_shape', tuple(int(s) for s in self.image_shape))
    object.__setattr__(self, 'blocks', tuple(int(b) for b in self.blocks))
    h, w, c = self.image_shape
    f = 2 ** len(self.blocks)
    if not self.blocks or h % f or w % f:
      raise ConfigError(f'image size {h}x{w} must be divisible by 2**len(blocks) = {f} '
                        f'(blocks={self.blocks}); resize or crop the images, or change '
                        'config.model.blocks.')
    if c not in (1, 3):
      raise ConfigError(f'images must have 1 or 3 channels, got {c}.')
    if self.norm not in ('batch', 'none'):
      raise ConfigError(f"config.model.norm must be 'batch' or 'none', got {self.norm!r}.")
    if self.upsample_impl not in UPSAMPLE_IMPLS:
      raise ConfigError(f'upsample_impl must be one of {UPSAMPLE_IMPLS}, got '
                        f'{self.upsample_impl!r}.')
    if self.latent < 1 or self.fc < 1 or min(self.blocks) < 1:
      raise ConfigError('config.model.latent, fc and blocks must be positive.')
    likelihoods.get(self.likelihood, self.sigma)  # validates the name and σ


def _norm(kind: str, train: bool, momentum: float) -> Callable[[jax.Array], jax.Array]:
  if kind == 'none':
    return lambda h: h
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5)


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


def _flatten_lead(x: jax.Array, keep: int) -> tuple[jax.Array, tuple[int, ...]]:
  """[*lead, *rest(keep dims)] -> [prod(lead), *rest], lead."""
  lead = x.shape[:x.ndim - keep]
  return x.reshape((-1,) + x.shape[x.ndim - keep:]), lead


class Encoder(nn.Module):
  """x [..., B, H, W, C] -> Posterior([..., B, L], [..., B, L])."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Posterior:
    cfg = self.config
    h, lead = _flatten_lead(x, 3)
    for i, f in enumerate(cfg.blocks):
      h = nn.relu(UpsampleConv(f, impl=cfg.upsample_impl, name=f'Conv_{i}')(h))
      h = max_pool_2x2(h)
      h = _norm(cfg.norm, train, cfg.bn_momentum)(h)
    h = h.reshape((h.shape[0], -1))
    h = nn.relu(_norm(cfg.norm, train, cfg.bn_momentum)(nn.Dense(cfg.fc)(h)))
    h = nn.Dense(2 * cfg.latent)(h)
    mean, log_scale = jnp.split(h, 2, axis=-1)
    return Posterior(mean.reshape(lead + mean.shape[1:]), log_scale.reshape(lead + mean.shape[1:]))


class Decoder(nn.Module):
  """z [..., B, L] -> DecoderOutput(loc [..., B, H, W, C], log_scale)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> likelihoods.DecoderOutput:
    cfg = self.config
    lik = likelihoods.get(cfg.likelihood, cfg.sigma)
    height, width, channels = cfg.image_shape
    side_h, side_w = height // 2 ** len(cfg.blocks), width // 2 ** len(cfg.blocks)
    h, lead = _flatten_lead(z, 1)
    h = nn.relu(_norm(cfg.norm, train, cfg.bn_momentum)(nn.Dense(cfg.fc)(h)))
    h = nn.Dense(side_h * side_w * cfg.blocks[-1])(h)
    h = nn.relu(_norm(cfg.norm, train, cfg.bn_momentum)(h))
    h = h.reshape((-1, side_h, side_w, cfg.blocks[-1]))
    # Named as nn.Conv's auto-names (Conv_0, ...), so parameter trees match the plain model's.
    for i, f in enumerate(reversed(cfg.blocks)):
      h = UpsampleConv(f, upsample=True, impl=cfg.upsample_impl, name=f'Conv_{i}')(h)
      h = _norm(cfg.norm, train, cfg.bn_momentum)(nn.relu(h))
    loc = UpsampleConv(channels, impl=cfg.upsample_impl, name=f'Conv_{len(cfg.blocks)}')(h)
    if lik.loc_activation == 'sigmoid':
      loc = nn.sigmoid(loc)
    loc = loc.reshape(lead + loc.shape[1:])
    if lik.scale == 'fixed':
      log_scale = jnp.full((), lik.fixed_log_scale, loc.dtype)
    elif lik.scale in ('global', 'pixel'):
      shape = () if lik.scale == 'global' else cfg.image_shape
      raw = self.param('log_scale', nn.initializers.constant(cfg.init_log_scale), shape)
      log_scale = jnp.maximum(raw, cfg.min_log_scale)
    else:
      log_scale = None
    return likelihoods.DecoderOutput(loc, log_scale)


class VAE(nn.Module):
  """Encoder and decoder; ``__call__`` runs both with one reparameterised sample."""
  config: ModelConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def __call__(self, x: jax.Array, noise: jax.Array, train: bool = False):
    """x [B, H, W, C], noise [K, B, L] -> (Posterior [B, L], DecoderOutput [K, B, H, W, C])."""
    posterior = self.encoder(x, train)
    z = posterior.mean + jnp.exp(posterior.log_scale) * noise
    return posterior, self.decoder(z, train)

  def encode(self, x: jax.Array, train: bool = False) -> Posterior:
    return self.encoder(x, train)

  def decode(self, z: jax.Array, train: bool = False) -> likelihoods.DecoderOutput:
    return self.decoder(z, train)


@functools.partial(jax.jit, static_argnums=0)
def init(config: ModelConfig, key: jax.Array) -> Variables:
  """Initial variables for ``config`` (a batch of 2 zeros traces the shapes).

  Compiled (static ``config``): one XLA program instead of hundreds of eager ops, ~3 s
  instead of ~8 s per process on a 2-core CPU, the same values.
  """
  x = jnp.zeros((2,) + tuple(config.image_shape), jnp.float32)
  noise = jnp.zeros((1, 2, config.latent), jnp.float32)
  return VAE(config).init(key, x, noise, train=False)


def encode(config: ModelConfig, variables: Variables, x: jax.Array) -> Posterior:
  """Eval-mode q(z|x): x [..., B, H, W, C] -> Posterior [..., B, L]."""
  return VAE(config).apply(variables, x, method=VAE.encode)


def decode(config: ModelConfig, variables: Variables, z: jax.Array) -> likelihoods.DecoderOutput:
  """Eval-mode decoder: z [..., B, L] -> DecoderOutput [..., B, H, W, C]."""
  return VAE(config).apply(variables, z, method=VAE.decode)


class ModelFns(NamedTuple):
  """A trained model as pure functions (eval mode), for estimators and scores."""
  encode: Callable[[jax.Array], Posterior]  # x [B, H, W, C] -> Posterior [B, L]
  decode: Callable[[jax.Array], likelihoods.DecoderOutput]  # z [..., B, L] -> [..., B, H, W, C]
  likelihood: likelihoods.Likelihood

  def log_likelihood(self, x: jax.Array, z: jax.Array) -> jax.Array:
    """log p(x|z) summed over pixels: x [B, H, W, C], z [..., B, L] -> [..., B]."""
    return jnp.sum(self.likelihood.log_prob(self.decode(z), x), axis=(-3, -2, -1))


def model_fns(config: ModelConfig, variables: Variables) -> ModelFns:
  """Binds ``variables`` into the estimator protocol (call inside ``jax.jit``)."""
  return ModelFns(lambda x: encode(config, variables, x),
                  lambda z: decode(config, variables, z),
                  likelihoods.get(config.likelihood, config.sigma))


def num_params(variables: Variables) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(variables['params']))
