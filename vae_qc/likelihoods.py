"""Decoder likelihoods p(x|z): per-pixel log-probabilities.

A decoder returns a :class:`DecoderOutput` ``(loc, log_scale)`` whose meaning depends on the
likelihood (see each class). ``log_prob(out, x)`` returns per-pixel log p(x_ij|z) with the
shape of ``out.loc`` (``[..., B, H, W, C]``), broadcasting ``x`` (``[B, H, W, C]``) against the
leading sample axes. Sum over the last three axes for log p(x|z) per image.

Images are float32 in [0, 1]. Continuous likelihoods are densities on that interval; the
discretised ones give the probability of the 8-bit value ``round(255 x)``, so ``-log p`` of
a whole image is a code length in nats, comparable with a compressed file size.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vae_qc.errors import ConfigError

PAPER_SIGMA = 1.0 / math.sqrt(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class DecoderOutput(NamedTuple):
  loc: jax.Array  # [..., B, H, W, C]: mean in [0, 1] (Gaussian, logistic) or logits (Bernoulli)
  log_scale: jax.Array | None  # broadcastable to loc, or None where the likelihood has no scale


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """Base class. Subclasses say how the decoder's last layer is read.

  Attributes:
    name: registry name.
    loc_activation: 'sigmoid' (a mean in [0, 1]) or 'none' (logits).
    scale: 'fixed' (``fixed_log_scale``), 'global' (one learned log σ), 'pixel' (a learned
      log σ per pixel and channel) or 'none'.
  """
  name: str = ''
  loc_activation: str = 'sigmoid'
  scale: str = 'none'
  fixed_log_scale: float = 0.0

  def log_prob(self, out: DecoderOutput, x: jax.Array) -> jax.Array:
    """Per-pixel log p(x|z) ``[..., B, H, W, C]``."""
    raise NotImplementedError

  def mean(self, out: DecoderOutput) -> jax.Array:
    """E[x|z] ``[..., B, H, W, C]``."""
    return out.loc


def _gaussian_log_prob(loc, log_scale, x):
  return -0.5 * jnp.square((x - loc) * jnp.exp(-log_scale)) - log_scale - _HALF_LOG_2PI


@dataclasses.dataclass(frozen=True)
class Gaussian(Likelihood):
  """N(x; loc, σ²) per pixel; loc = sigmoid(decoder), σ fixed or learned."""

  def log_prob(self, out, x):
    return _gaussian_log_prob(out.loc, out.log_scale, x)


@dataclasses.dataclass(frozen=True)
class Bernoulli(Likelihood):
  """Bernoulli(x; sigmoid(logits)) per pixel, for x in [0, 1] (continuous x: the usual
  cross-entropy, which is not a normalised density for grey values)."""
  loc_activation: str = 'none'

  def log_prob(self, out, x):
    return x * jax.nn.log_sigmoid(out.loc) + (1.0 - x) * jax.nn.log_sigmoid(-out.loc)

  def mean(self, out):
    return jax.nn.sigmoid(out.loc)


def _log1mexp(a):
  """log(1 - exp(a)) for a < 0, stable on both sides of -log 2 (Mächler, 2012)."""
  a = jnp.minimum(a, -1e-7)  # keeps log finite, so no NaN gradients leak through jnp.where
  return jnp.where(a > -0.6931, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


@dataclasses.dataclass(frozen=True)
class DiscretizedLogistic(Likelihood):
  """P(round(255 x) | z) under a logistic(loc, s) binned into 256 bins of width 1/255.

  Bin k covers [(k - ½)/255, (k + ½)/255]; the edge bins take the tails (-∞ and +∞),
  as in PixelCNN++ (Salimans et al., 2017). Sums to one over the 256 values.
  """

  def log_prob(self, out, x):
    return _discretized(out, x, jax.nn.log_sigmoid, lambda t: jax.nn.log_sigmoid(-t))


@dataclasses.dataclass(frozen=True)
class DiscretizedGaussian(Likelihood):
  """P(round(255 x) | z) under N(loc, σ²) binned like :class:`DiscretizedLogistic`."""

  def log_prob(self, out, x):
    return _discretized(out, x, jax.scipy.stats.norm.logcdf,
                        lambda t: jax.scipy.stats.norm.logcdf(-t))


def _discretized(out, x, log_cdf, log_sf):
  """log P(bin of x) = log(F(hi) - F(lo)) with F the CDF of the standardised variable."""
  x = jnp.round(x * 255.0) / 255.0
  inv_s = jnp.exp(-out.log_scale)
  centre = x - out.loc
  hi = (centre + 0.5 / 255.0) * inv_s
  lo = (centre - 0.5 / 255.0) * inv_s
  # Interior bins on the side of the distribution where the tail is accurate.
  interior = jnp.where(centre > 0,
                       log_sf(lo) + _log1mexp(log_sf(hi) - log_sf(lo)),
                       log_cdf(hi) + _log1mexp(log_cdf(lo) - log_cdf(hi)))
  return jnp.where(x < 0.5 / 255.0, log_cdf(hi),
                   jnp.where(x > 1.0 - 0.5 / 255.0, log_sf(lo), interior))


_KINDS = {
    'gaussian_fixed': lambda sigma: Gaussian('gaussian_fixed', 'sigmoid', 'fixed', math.log(sigma)),
    'gaussian_learned': lambda sigma: Gaussian('gaussian_learned', 'sigmoid', 'global'),
    'gaussian_learned_pixel': lambda sigma: Gaussian('gaussian_learned_pixel', 'sigmoid', 'pixel'),
    'bernoulli': lambda sigma: Bernoulli('bernoulli', 'none', 'none'),
    'discretized_logistic': lambda sigma: DiscretizedLogistic('discretized_logistic', 'sigmoid', 'global'),
    'discretized_gaussian': lambda sigma: DiscretizedGaussian('discretized_gaussian', 'sigmoid', 'global'),
}
NAMES = tuple(_KINDS)


def get(name: str, sigma: float = PAPER_SIGMA) -> Likelihood:
  """Likelihood by name: one of :data:`NAMES`. ``sigma`` is used by 'gaussian_fixed'."""
  if name not in _KINDS:
    raise ConfigError(f'unknown likelihood {name!r}; choose one of {", ".join(NAMES)} '
                      '(config.model.likelihood).')
  if not sigma > 0:
    raise ConfigError(f'config.model.sigma must be > 0, got {sigma}.')
  return _KINDS[name](sigma)
