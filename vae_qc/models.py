"""The paper's VGG-like convolutional VAE (Tonnaer et al., 2019) in flax.linen.

Encoder block(f): conv 3×3 (f) → ReLU → max-pool 2×2/2 → BatchNorm; then flatten →
Dense(fc) → BN → ReLU → Dense(2·latent) = (mean, log σ) of q(z|x).
Decoder: Dense(fc) → BN → ReLU → Dense(h·w·f_last) → BN → ReLU → reshape; per block, filters
reversed: nearest up-sample ×2 → conv 3×3 (f) → ReLU → BN; then conv 3×3 (C) → the
likelihood's location (sigmoid mean, or logits).

Convolutions and pooling are :mod:`vae_qc.ops` layers: ``ModelConfig.upsample_impl`` picks
their XLA:CPU-friendly forms ('subpixel', default) or the layers as written ('plain'); same
parameters, same outputs up to float rounding.

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

from vae_qc import likelihoods
from vae_qc import ops
from vae_qc.errors import ConfigError

Variables = Any  # {'params': ..., 'batch_stats': ...}



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
    if self.upsample_impl not in ops.IMPLS:
      raise ConfigError(f'upsample_impl must be one of {ops.IMPLS}, got '
                        f'{self.upsample_impl!r}.')
    if self.latent < 1 or self.fc < 1 or min(self.blocks) < 1:
      raise ConfigError('config.model.latent, fc and blocks must be positive.')
    likelihoods.get(self.likelihood, self.sigma)  # validates the name and σ


def _norm(kind: str, train: bool, momentum: float) -> Callable[[jax.Array], jax.Array]:
  if kind == 'none':
    return lambda h: h
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5)


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
      h = nn.relu(ops.UpsampleConv(f, impl=cfg.upsample_impl, name=f'Conv_{i}')(h))
      h = ops.max_pool_2x2(h)
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
      h = ops.UpsampleConv(f, upsample=True, impl=cfg.upsample_impl, name=f'Conv_{i}')(h)
      h = _norm(cfg.norm, train, cfg.bn_momentum)(nn.relu(h))
    loc = ops.UpsampleConv(channels, impl=cfg.upsample_impl, name=f'Conv_{len(cfg.blocks)}')(h)
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

  Compiled (static ``config``): one XLA program instead of hundreds of eager ops (faster to
  start), the same values.
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
