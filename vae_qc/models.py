"""The paper's VGG-like convolutional VAE (Tonnaer et al., 2019) in flax.linen.

Encoder block(f): conv 3×3 (f) → ReLU → max-pool 2×2/2 → BatchNorm; then flatten →
Dense(fc) → BN → ReLU → Dense(2·latent) = (mean, log σ) of q(z|x).
Decoder: Dense(fc) → BN → ReLU → Dense(h·w·f_last) → BN → ReLU → reshape; per block, filters
reversed: nearest up-sample ×2 → conv 3×3 (f) → ReLU → BN; then conv 3×3 (C) → the
likelihood's location (sigmoid mean, or logits).

Convolutions and pooling are :mod:`vae_qc.ops` layers: ``ModelConfig.upsample_impl`` picks
their XLA:CPU-friendly forms ('subpixel', default) or the layers as written ('plain'); same
parameters, same outputs up to float rounding.

``ModelConfig.arch='spatial'`` is the fully convolutional form of the same blocks for
textures (print surfaces): the latent is a map [H/f, W/f, latent] (f = 2**len(blocks)) made
by a 1×1 convolution instead of the dense layers, and the decoder starts with a 3×3
convolution of that map. It has no dense layer, so one set of parameters scores images of any
size divisible by f (:meth:`ModelConfig.for_shape`); the estimators see the flattened map
[B, (H/f)(W/f)·latent] and are unchanged.

The model is used through pure functions of ``variables`` (``{'params', 'batch_stats'}``):
:func:`encode`, :func:`decode`, and :func:`model_fns`, which binds them for the estimators.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_qc import inpaint as inpaint_lib
from vae_qc import likelihoods
from vae_qc import ops
from vae_qc.errors import ConfigError, DataError

Variables = Any  # {'params': ..., 'batch_stats': ...}

ARCHS = ('global', 'spatial')



class Posterior(NamedTuple):
  """Diagonal Gaussian q(z|x)."""
  mean: jax.Array  # [..., B, L]
  log_scale: jax.Array  # [..., B, L]


# Bounds of the encoder's log σ. An encoder extrapolates linearly: on a patch unlike any it was
# trained on (the lifted corner of a warped print) one gave log σ = 92, and exp(92) overflows
# float32, so the sample, the KL and every score of that image became NaN. The print runs'
# encoders give −4.3 to 0.6 on their training and test images, where the clip is the identity;
# a clipped σ of e^10 is already 2·10⁴ prior widths, an image as unlikely as any.
MIN_POSTERIOR_LOG_SCALE = -15.0
MAX_POSTERIOR_LOG_SCALE = 10.0


def _posterior(mean: jax.Array, log_scale: jax.Array, shape) -> Posterior:
  """q(z|x) with ``mean`` and ``log_scale`` reshaped to ``shape``, the log σ clipped to
  [MIN_POSTERIOR_LOG_SCALE, MAX_POSTERIOR_LOG_SCALE] (finite densities on any input)."""
  log_scale = jnp.clip(log_scale, MIN_POSTERIOR_LOG_SCALE, MAX_POSTERIOR_LOG_SCALE)
  return Posterior(mean.reshape(shape), log_scale.reshape(shape))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture. ``image_shape`` is (H, W, C) with H and W divisible by 2**len(blocks)."""
  image_shape: tuple[int, int, int] = (28, 28, 1)
  blocks: tuple[int, ...] = (32, 64)
  fc: int = 64
  latent: int = 2
  norm: str = 'batch'  # 'batch' (paper) or 'none'
  likelihood: str = 'gaussian_fixed'
  sigma: float = likelihoods.PAPER_SIGMA  # σ of 'gaussian_fixed', b of 'laplace_fixed'
  init_log_scale: float = math.log(0.1)  # start of a learned log σ
  min_log_scale: float = math.log(1e-3)  # floor of a learned log σ (densities stay finite)
  bn_momentum: float = 0.9  # flax convention; PyTorch's momentum=0.1
  # 'subpixel' (the fast forms) or 'plain' (as written); same parameters and outputs.
  upsample_impl: str = 'subpixel'
  # 'global' (the paper's: dense layers, one latent vector per image) or 'spatial' (fully
  # convolutional: a latent map of ``latent`` channels at 1/2**len(blocks) of the image size).
  arch: str = 'global'
  # > 0: the encoder sees the patch with one of four groups of its inpaint × inpaint cells
  # hidden (vae_qc.inpaint); 0: the whole patch (the paper's).
  inpaint: int = 0

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
    if self.arch not in ARCHS:
      raise ConfigError(f"config.model.arch must be one of {ARCHS}, got {self.arch!r}.")
    inpaint_lib.check(self.inpaint, self.image_shape, self.arch)
    if self.upsample_impl not in ops.IMPLS:
      raise ConfigError(f'upsample_impl must be one of {ops.IMPLS}, got '
                        f'{self.upsample_impl!r}.')
    if self.latent < 1 or self.fc < 1 or min(self.blocks) < 1:
      raise ConfigError('config.model.latent, fc and blocks must be positive.')
    likelihoods.get(self.likelihood, self.sigma)  # validates the name and σ

  @property
  def reduction(self) -> int:
    """f = 2**len(blocks): image side / latent-map side."""
    return 2 ** len(self.blocks)

  @property
  def num_latents(self) -> int:
    """L, the size of the (flattened) latent: ``latent``, or (H/f)(W/f)·latent (spatial)."""
    if self.arch == 'global':
      return self.latent
    h, w, _ = self.image_shape
    return (h // self.reduction) * (w // self.reduction) * self.latent

  def for_shape(self, image_shape) -> 'ModelConfig':
    """The config that applies the same parameters to images of ``image_shape`` (H, W, C).

    A spatial model takes any H, W divisible by f (a new config, same parameters); the
    global model only its own shape. Raises DataError otherwise.
    """
    image_shape = tuple(int(s) for s in image_shape)
    if image_shape == self.image_shape:
      return self
    h, w, c = image_shape
    f = self.reduction
    if self.arch == 'spatial' and c == self.image_shape[-1] and h % f == 0 and w % f == 0:
      return dataclasses.replace(self, image_shape=image_shape)
    need = (f'[H, W, {self.image_shape[-1]}] with H, W divisible by {f}'
            if self.arch == 'spatial' else f'{list(self.image_shape)}')
    raise DataError(f'images of shape {list(image_shape)} do not fit the model, which takes '
                    f'{need}.')


def _norm(kind: str, train: bool, momentum: float) -> Callable[[jax.Array], jax.Array]:
  if kind == 'none':
    return lambda h: h
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5)


def _flatten_lead(x: jax.Array, keep: int) -> tuple[jax.Array, tuple[int, ...]]:
  """[*lead, *rest(keep dims)] -> [prod(lead), *rest], lead."""
  lead = x.shape[:x.ndim - keep]
  return x.reshape((-1,) + x.shape[x.ndim - keep:]), lead


def _encoder_blocks(cfg: ModelConfig, h: jax.Array, train: bool) -> jax.Array:
  """The paper's blocks, inside an encoder's ``nn.compact`` call: per block, conv 3×3 →
  ReLU → max-pool 2×2 → BN. h [N, H, W, C] -> [N, H/f, W/f, blocks[-1]]."""
  for i, f in enumerate(cfg.blocks):
    h = nn.relu(ops.UpsampleConv(f, impl=cfg.upsample_impl, name=f'Conv_{i}')(h))
    h = ops.max_pool_2x2(h)
    h = _norm(cfg.norm, train, cfg.bn_momentum)(h)
  return h


class Encoder(nn.Module):
  """x [..., B, H, W, C] -> Posterior([..., B, L], [..., B, L])."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Posterior:
    cfg = self.config
    h, lead = _flatten_lead(x, 3)
    h = _encoder_blocks(cfg, h, train)
    h = h.reshape((h.shape[0], -1))
    h = nn.relu(_norm(cfg.norm, train, cfg.bn_momentum)(nn.Dense(cfg.fc)(h)))
    h = nn.Dense(2 * cfg.latent)(h)
    mean, log_scale = jnp.split(h, 2, axis=-1)
    return _posterior(mean, log_scale, lead + mean.shape[1:])


class Decoder(nn.Module):
  """z [..., B, L] -> DecoderOutput(loc [..., B, H, W, C], log_scale)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> likelihoods.DecoderOutput:
    cfg = self.config
    height, width, _ = cfg.image_shape
    side_h, side_w = height // 2 ** len(cfg.blocks), width // 2 ** len(cfg.blocks)
    h, lead = _flatten_lead(z, 1)
    h = nn.relu(_norm(cfg.norm, train, cfg.bn_momentum)(nn.Dense(cfg.fc)(h)))
    h = nn.Dense(side_h * side_w * cfg.blocks[-1])(h)
    h = nn.relu(_norm(cfg.norm, train, cfg.bn_momentum)(h))
    h = h.reshape((-1, side_h, side_w, cfg.blocks[-1]))
    # Named as nn.Conv's auto-names (Conv_0, ...), so parameter trees match the plain model's.
    for i, f in enumerate(reversed(cfg.blocks)):
      h = ops.UpsampleConv(f, upsample=True, impl=cfg.upsample_impl, name=f'Conv_{i}')(h)
      h = _norm(cfg.norm, train, cfg.bn_momentum)(nn.relu(h))
    return _likelihood_head(self, h, lead, f'Conv_{len(cfg.blocks)}')


def _likelihood_head(module: nn.Module, h: jax.Array, lead: tuple[int, ...],
                     name: str) -> likelihoods.DecoderOutput:
  """The decoder's last 3×3 convolution, read as the likelihood's parameters.

  h [N, H, W, F] -> DecoderOutput(loc [*lead, H, W, C], log_scale). A 'predicted' scale
  (heteroscedastic) takes C more output channels: log σ = m + softplus(raw + s0 − m), which
  starts near s0 = ``init_log_scale`` and stays above m = ``min_log_scale`` with a gradient
  everywhere. A 'global' or 'pixel' scale is a parameter of the module.
  """
  cfg = module.config
  lik = likelihoods.get(cfg.likelihood, cfg.sigma)
  channels = cfg.image_shape[-1]
  out = ops.UpsampleConv(channels * (2 if lik.scale == 'predicted' else 1), impl=cfg.upsample_impl,
                     name=name)(h)
  out = out.reshape(lead + out.shape[1:])
  loc = out[..., :channels]
  if lik.loc_activation == 'sigmoid':
    loc = nn.sigmoid(loc)
  if lik.scale == 'fixed':
    log_scale = jnp.full((), lik.fixed_log_scale, loc.dtype)
  elif lik.scale == 'predicted':
    log_scale = cfg.min_log_scale + nn.softplus(out[..., channels:] + cfg.init_log_scale -
                                                cfg.min_log_scale)
  elif lik.scale in ('global', 'pixel'):
    shape = () if lik.scale == 'global' else cfg.image_shape
    raw = module.param('log_scale', nn.initializers.constant(cfg.init_log_scale), shape)
    log_scale = jnp.maximum(raw, cfg.min_log_scale)
  else:
    log_scale = None
  return likelihoods.DecoderOutput(loc, log_scale)


class SpatialEncoder(nn.Module):
  """Fully convolutional: x [..., B, H, W, C] -> Posterior [..., B, (H/f)(W/f)·latent].

  The paper's blocks, then a 1×1 convolution to (mean, log σ) of a latent map
  [H/f, W/f, latent], flattened row-major.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Posterior:
    cfg = self.config
    h, lead = _flatten_lead(x, 3)
    h = _encoder_blocks(cfg, h, train)
    h = nn.Conv(2 * cfg.latent, (1, 1), name='to_latent')(h)
    mean, log_scale = jnp.split(h.reshape(h.shape[0], -1, 2 * cfg.latent), 2, axis=-1)
    return _posterior(mean, log_scale, lead + (-1,))


class SpatialDecoder(nn.Module):
  """z [..., B, (H/f)(W/f)·latent] -> DecoderOutput [..., B, H, W, C]: a 3×3 convolution of
  the latent map → BN → ReLU, then the paper's up-sampling blocks and likelihood head."""
  config: ModelConfig

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> likelihoods.DecoderOutput:
    cfg = self.config
    height, width, _ = cfg.image_shape
    h, lead = _flatten_lead(z, 1)
    h = h.reshape(-1, height // cfg.reduction, width // cfg.reduction, cfg.latent)
    h = ops.UpsampleConv(cfg.blocks[-1], impl=cfg.upsample_impl, name='from_latent')(h)
    h = nn.relu(_norm(cfg.norm, train, cfg.bn_momentum)(h))
    for i, f in enumerate(reversed(cfg.blocks)):
      h = ops.UpsampleConv(f, upsample=True, impl=cfg.upsample_impl, name=f'Conv_{i}')(h)
      h = _norm(cfg.norm, train, cfg.bn_momentum)(nn.relu(h))
    return _likelihood_head(self, h, lead, f'Conv_{len(cfg.blocks)}')


class VAE(nn.Module):
  """Encoder and decoder; ``__call__`` runs both with one reparameterised sample."""
  config: ModelConfig

  def setup(self):
    spatial = self.config.arch == 'spatial'
    self.encoder = (SpatialEncoder if spatial else Encoder)(self.config)
    self.decoder = (SpatialDecoder if spatial else Decoder)(self.config)

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

  Compiled (static ``config``): one XLA program instead of hundreds of eager ops (faster to
  start), the same values.
  """
  x = jnp.zeros((2,) + tuple(config.image_shape), jnp.float32)
  noise = jnp.zeros((1, 2, config.num_latents), jnp.float32)
  return VAE(config).init(key, x, noise, train=False)


def encode(config: ModelConfig, variables: Variables, x: jax.Array) -> Posterior:
  """Eval-mode q(z|x): x [..., B, H, W, C] -> Posterior [..., B, L]."""
  return VAE(config).apply(variables, x, method=VAE.encode)


def decode(config: ModelConfig, variables: Variables, z: jax.Array) -> likelihoods.DecoderOutput:
  """Eval-mode decoder: z [..., B, L] -> DecoderOutput [..., B, H, W, C]."""
  return VAE(config).apply(variables, z, method=VAE.decode)


class ModelFns(NamedTuple):
  """A trained model as pure functions (eval mode), for estimators and scores.

  ``aux``: what some scores need beside the model, fitted or trained after it (see
  ``vae_qc.aux``): 'latent_gmm' (arrays of a Gaussian mixture over encoder means),
  'background' (the ModelFns of the background model). Empty when the run has none.
  """
  encode: Callable[[jax.Array], Posterior]  # x [B, H, W, C] -> Posterior [B, L]
  decode: Callable[[jax.Array], likelihoods.DecoderOutput]  # z [..., B, L] -> [..., B, H, W, C]
  likelihood: likelihoods.Likelihood
  aux: dict = {}

  def log_likelihood(self, x: jax.Array, z: jax.Array) -> jax.Array:
    """log p(x|z) summed over pixels: x [B, H, W, C], z [..., B, L] -> [..., B]."""
    return jnp.sum(self.likelihood.log_prob(self.decode(z), x), axis=(-3, -2, -1))


def model_fns(config: ModelConfig, variables: Variables) -> ModelFns:
  """Binds ``variables`` into the estimator protocol (call inside ``jax.jit``).

  ``variables['aux']``, when present, holds what scores need beside the model: 'latent_gmm'
  (arrays, passed as they are) and 'background' (variables of a model of the same config,
  bound to its own ModelFns)."""
  aux_vars = variables.get('aux', {}) if hasattr(variables, 'get') else {}
  if aux_vars:
    variables = {k: v for k, v in variables.items() if k != 'aux'}
  aux = {k: (model_fns(config, v) if k == 'background' else v) for k, v in aux_vars.items()}
  return ModelFns(lambda x: encode(config, variables, x),
                  lambda z: decode(config, variables, z),
                  likelihoods.get(config.likelihood, config.sigma), aux)


def num_params(variables: Variables) -> int:
  """Parameters of the model itself (not of ``variables['aux']``)."""
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(variables['params']))
