"""Decoder likelihoods p(x|z): per-pixel log-probabilities.

A decoder returns a :class:`DecoderOutput` ``(loc, log_scale)`` whose meaning depends on the
likelihood (see each class). ``log_prob(out, x)`` returns per-pixel log p(x_ij|z) with the
shape of ``out.loc`` (``[..., B, H, W, C]``), broadcasting ``x`` (``[B, H, W, C]``) against the
leading sample axes. Sum over the last three axes for log p(x|z) per image.

Images are float32 in [0, 1]. The Gaussians are densities of the real value x (on the whole
line, evaluated on [0, 1]); the discretised ones give the probability of the 8-bit value
``round(255 x)``, so ``−Σ log P`` of a whole image is a code length in nats, comparable with a
compressed file size. ``Likelihood.support`` says which, and :func:`log_prob_8bit` converts a
density's log p(x) to the log-probability of the 8-bit image (−D log 255).
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
_LOG_2 = math.log(2.0)


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
      log σ per pixel and channel), 'predicted' (heteroscedastic: the decoder predicts a log σ
      per pixel and channel of each image, from its second set of output channels) or 'none'.
    support: what ``log_prob`` is a log of: 'density' (a density of the real value x, per unit
      of x), 'uint8' (the probability of the 8-bit value round(255 x); sums to one over the
      256 values) or 'binary' (a Bernoulli mass of x in {0, 1}).
  """
  name: str = ''
  loc_activation: str = 'sigmoid'
  scale: str = 'none'
  fixed_log_scale: float = 0.0
  support: str = 'density'

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


def _laplace_log_prob(loc, log_scale, x):
  return -jnp.abs(x - loc) * jnp.exp(-log_scale) - log_scale - _LOG_2


@dataclasses.dataclass(frozen=True)
class Laplace(Likelihood):
  """Laplace(x; loc, b) = exp(−|x − loc| / b) / (2b) per pixel; loc = sigmoid(decoder), b
  fixed (``config.model.sigma``). Its median is loc, so a decoder trained on it draws the
  median of what the code leaves open rather than the mean: sharper edges where a texture
  is one of two grey levels (a mortar joint or a brick), and a residual penalised by its
  size, not its square."""

  def log_prob(self, out, x):
    return _laplace_log_prob(out.loc, out.log_scale, x)


@dataclasses.dataclass(frozen=True)
class Bernoulli(Likelihood):
  """Bernoulli(x; sigmoid(logits)) per pixel, for x in [0, 1] (continuous x: the usual
  cross-entropy, which is not a normalised density for grey values)."""
  loc_activation: str = 'none'
  support: str = 'binary'

  def log_prob(self, out, x):
    return x * jax.nn.log_sigmoid(out.loc) + (1.0 - x) * jax.nn.log_sigmoid(-out.loc)

  def mean(self, out):
    return jax.nn.sigmoid(out.loc)


def _log1mexp(a):
  """log(1 − exp(a)) for a < 0, stable on both sides of −log 2 (Mächler, 2012).

  ``a`` is clamped to ≤ −1e-7 so that both branches of the ``jnp.where`` stay finite (no NaN
  gradients leak through it); callers switch to a midpoint rule before ``a`` gets that small.
  """
  a = jnp.minimum(a, -1e-7)
  return jnp.where(a > -0.6931, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


# A bin narrower than this (in standard units, times 1 + |t|) uses the midpoint rule
# log f(t) + log Δ, whose relative error is ≤ (Δ (1 + |t|))² / 24 ≈ 4e-8; wider bins use the
# exact CDF difference, whose float32 cancellation error is ~1e-7 / (Δ (1 + |t|)).
_MIDPOINT_BELOW = 1e-3


@dataclasses.dataclass(frozen=True)
class DiscretizedLogistic(Likelihood):
  """P(k | z) of the 8-bit value k = round(255 x) under a logistic(loc, s) binned into 256
  bins of width 1/255.

  Bin k covers [(k − ½)/255, (k + ½)/255]; the edge bins take the tails (−∞ and +∞), as in
  PixelCNN++ (Salimans et al., 2017), so Σ_k P(k | z) = 1 for any loc and s (x outside [0, 1]
  falls into the edge bins). ``log_prob`` is thus a log-probability, and −Σ log P over the
  pixels is the code length in nats of the 8-bit image.
  """
  support: str = 'uint8'

  def log_prob(self, out, x):
    return _discretized(out, x, jax.nn.log_sigmoid, lambda t: jax.nn.log_sigmoid(-t),
                        lambda t: jax.nn.log_sigmoid(t) + jax.nn.log_sigmoid(-t))


@dataclasses.dataclass(frozen=True)
class DiscretizedGaussian(Likelihood):
  """P(k | z) of k = round(255 x) under N(loc, σ²) binned like :class:`DiscretizedLogistic`."""
  support: str = 'uint8'

  def log_prob(self, out, x):
    return _discretized(out, x, jax.scipy.stats.norm.logcdf,
                        lambda t: jax.scipy.stats.norm.logcdf(-t),
                        lambda t: -0.5 * jnp.square(t) - _HALF_LOG_2PI)


def _discretized(out, x, log_cdf, log_sf, log_pdf):
  """log P(bin of x) = log(F(t_hi) − F(t_lo)), t = (edge − loc) / s, F the standard CDF.

  Interior bins take the difference on the side of the distribution where the tail is
  accurate (log F for x ≤ loc, log(1 − F) above), and the midpoint rule
  log f(t_mid) + log(Δ/s) when the bin is very narrow relative to s (huge scales), where the
  difference would cancel. Edge bins: log F(t_hi) (k = 0) and log(1 − F(t_lo)) (k = 255).
  Every branch is finite, so gradients are finite everywhere.
  """
  x = jnp.round(x * 255.0) / 255.0
  inv_s = jnp.exp(-out.log_scale)
  centre = x - out.loc
  half = 0.5 / 255.0
  hi = (centre + half) * inv_s
  lo = (centre - half) * inv_s
  mid = centre * inv_s
  width = 2.0 * half * inv_s  # Δ / s
  interior = jnp.where(centre > 0,
                       log_sf(lo) + _log1mexp(log_sf(hi) - log_sf(lo)),
                       log_cdf(hi) + _log1mexp(log_cdf(lo) - log_cdf(hi)))
  narrow = width * (1.0 + jnp.abs(mid)) < _MIDPOINT_BELOW
  midpoint = log_pdf(mid) + jnp.log(2.0 * half) - out.log_scale
  interior = jnp.where(narrow, midpoint, interior)
  return jnp.where(x < half, log_cdf(hi), jnp.where(x > 1.0 - half, log_sf(lo), interior))


def log_prob_8bit_offset(likelihood: Likelihood, num_dims: int) -> float:
  """c such that log P(8-bit image) = log p(x) + c for this likelihood (nats per image).

  * 'uint8' likelihoods (discretised): ``log_prob`` already is log P(k); c = 0.
  * 'density' likelihoods (a density p of x = k/255, e.g. the Gaussians): the bin of k has
    width Δ = 1/255 in x, so P(k) ≈ p(x) Δ per pixel and, for the marginal too
    (P(k) = ∫ P(k|z) p(z) dz ≈ Δ^D p(x)): c = −D log 255. The approximation holds when the
    density is nearly constant across a bin (σ ≫ 1/255); the mass a Gaussian puts outside
    [0, 1] is wasted, so log p(x) + c is the log-probability of a valid (too long) code.
  * 'binary' (Bernoulli): not a distribution over 8-bit grey values; ConfigError.

  Args:
    likelihood: the model's likelihood.
    num_dims: D = H·W·C, values per image.
  """
  if likelihood.support == 'uint8':
    return 0.0
  if likelihood.support == 'density':
    return -num_dims * math.log(255.0)
  raise ConfigError(f'likelihood {likelihood.name!r} is not a distribution over 8-bit pixel '
                    'values, so log P of the 8-bit image is undefined; use '
                    "config.model.likelihood='discretized_logistic' (or 'discretized_gaussian').")


def log_prob_8bit(likelihood: Likelihood, log_px: jax.Array, num_dims: int) -> jax.Array:
  """log P of the 8-bit image from the log-likelihood ``log_px`` [...] (nats per image) of its
  [0, 1] version: ``log_px + log_prob_8bit_offset(likelihood, num_dims)``, same shape."""
  return log_px + log_prob_8bit_offset(likelihood, num_dims)


_KINDS = {
    'gaussian_fixed': lambda sigma: Gaussian('gaussian_fixed', 'sigmoid', 'fixed', math.log(sigma)),
    'gaussian_learned': lambda sigma: Gaussian('gaussian_learned', 'sigmoid', 'global'),
    'gaussian_learned_pixel': lambda sigma: Gaussian('gaussian_learned_pixel', 'sigmoid', 'pixel'),
    'gaussian_hetero': lambda sigma: Gaussian('gaussian_hetero', 'sigmoid', 'predicted'),
    'laplace_fixed': lambda sigma: Laplace('laplace_fixed', 'sigmoid', 'fixed', math.log(sigma)),
    'discretized_logistic_hetero': lambda sigma: DiscretizedLogistic(
        'discretized_logistic_hetero', 'sigmoid', 'predicted'),
    'bernoulli': lambda sigma: Bernoulli('bernoulli', 'none', 'none'),
    'discretized_logistic':
        lambda sigma: DiscretizedLogistic('discretized_logistic', 'sigmoid', 'global'),
    'discretized_gaussian':
        lambda sigma: DiscretizedGaussian('discretized_gaussian', 'sigmoid', 'global'),
}
NAMES = tuple(_KINDS)


def get(name: str, sigma: float = PAPER_SIGMA) -> Likelihood:
  """Likelihood by name: one of :data:`NAMES`. ``sigma`` is the fixed scale of
  'gaussian_fixed' (σ) and of 'laplace_fixed' (b)."""
  if name not in _KINDS:
    raise ConfigError(f'unknown likelihood {name!r}; choose one of {", ".join(NAMES)} '
                      '(config.model.likelihood).')
  if not sigma > 0:
    raise ConfigError(f'config.model.sigma must be > 0, got {sigma}.')
  return _KINDS[name](sigma)
