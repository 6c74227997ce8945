"""Monte-Carlo estimators of log p(x) for latent-variable models with a N(0, I) prior.

Protocol (any model plugs in, including toys with an exact log p(x)):

  encode_fn(x [B, ...]) -> Posterior(mean [B, L], log_scale [B, L])    # q(z|x), diagonal
  log_likelihood_fn(x [B, ...], z [S, B, L]) -> [S, B]                  # log p(x|z), summed

Every estimator is ``fn(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size) -> [B]``,
a log-likelihood (bigger = more likely), in nats per example. The posterior is encoded once;
the K samples are decoded ``chunk_size`` at a time inside a ``lax.scan`` that keeps running
sums and a streaming log-sum-exp, so memory depends on ``chunk_size``, not on K.

Sample k of example b is z_bk = μ_b + σ_b ε_bk with ε_bk ~ N(0, I) drawn from
``fold_in(key_b, k)``: the estimate does not depend on ``chunk_size``, and with one key per
example (``key`` of shape [B]) not on the batch the example is in either.

Adding an estimator: write ``fn(stats: SampleStats) -> [B]`` and decorate it with
``@register('name')``; it is then available to configs and scores by name.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_qc.errors import EstimatorError
from vae_qc.models import Posterior

EncodeFn = Callable[[jax.Array], Posterior]
LogLikelihoodFn = Callable[[jax.Array, jax.Array], jax.Array]

_LOG_2PI = math.log(2.0 * math.pi)


def kl_standard_normal(posterior: Posterior) -> jax.Array:
  """KL(q || N(0, I)) = Σ_l ½(σ² + μ² − 1) − log σ, analytic. [..., L] -> [...]."""
  mean, log_scale = posterior
  return jnp.sum(0.5 * (jnp.exp(2.0 * log_scale) + jnp.square(mean) - 1.0) - log_scale, -1)


def log_normal(z: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log N(z; mean, diag(σ²)) summed over the last axis. [..., L] -> [...]."""
  return jnp.sum(-0.5 * jnp.square((z - mean) * jnp.exp(-log_scale)) - log_scale - 0.5 * _LOG_2PI,
                 -1)


class SampleStats(NamedTuple):
  """Sufficient statistics of K importance samples, per example ``[B]``.

  With log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x):
  """
  num_samples: int
  kl: jax.Array  # KL(q(z|x) || p(z)), analytic
  sum_log_lik: jax.Array  # Σ_k log p(x|z_k)
  sum_sq_log_lik: jax.Array  # Σ_k (log p(x|z_k) − shift)², shift = first sample's value
  shift: jax.Array  # log p(x|z_0), for a stable variance
  lse_log_w: jax.Array  # log Σ_k w_k
  lse_2log_w: jax.Array  # log Σ_k w_k²


def _streaming_logsumexp(m, s, values):
  """Adds ``values`` [S, B] to a running (max m [B], Σ exp(v − m) s [B])."""
  m_new = jnp.maximum(m, jnp.max(values, axis=0))
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  s = s * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(values - m_safe), axis=0)
  return m_new, s


def _finish_lse(m, s):
  return jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(s)


def per_example_keys(key: jax.Array, batch: int) -> jax.Array:
  """A [B] array of keys from one key (split) or from [B] keys (returned as they are)."""
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.ndim == 0:
    return jax.random.split(key, batch)
  if key.shape != (batch,):
    raise EstimatorError(f'key must be one key or one key per example [{batch}], '
                         f'got shape {key.shape}.')
  return key


def _noise(keys: jax.Array, indices: jax.Array, latent: int) -> jax.Array:
  """ε [S, B, L], ε[s, b] drawn from fold_in(keys[b], indices[s])."""
  def one(k, i):
    return jax.random.normal(jax.random.fold_in(k, i), (latent,))
  return jax.vmap(lambda i: jax.vmap(lambda k: one(k, i))(keys))(indices)


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 5))
def _sample_stats(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size):
  posterior = encode_fn(x)
  batch, latent = posterior.mean.shape
  keys = per_example_keys(key, batch)
  n_chunks = -(-num_samples // chunk_size)

  def draw(indices):
    eps = _noise(keys, indices, latent)
    z = posterior.mean + jnp.exp(posterior.log_scale) * eps
    log_lik = log_likelihood_fn(x, z)  # [S, B]
    log_w = log_lik + log_normal(z, 0.0, 0.0) - log_normal(z, posterior.mean, posterior.log_scale)
    return log_lik, log_w

  shift, _ = draw(jnp.zeros((1,), jnp.int32))
  shift = shift[0]

  def body(carry, c):
    sum_ll, sum_sq, m1, s1, m2, s2 = carry
    indices = c * chunk_size + jnp.arange(chunk_size)
    valid = (indices < num_samples)[:, None]
    log_lik, log_w = draw(indices)
    log_lik = jnp.where(valid, log_lik, 0.0)
    log_w = jnp.where(valid, log_w, -jnp.inf)
    sum_ll = sum_ll + jnp.sum(log_lik, 0)
    sum_sq = sum_sq + jnp.sum(jnp.where(valid, jnp.square(log_lik - shift), 0.0), 0)
    m1, s1 = _streaming_logsumexp(m1, s1, log_w)
    m2, s2 = _streaming_logsumexp(m2, s2, 2.0 * log_w)
    return (sum_ll, sum_sq, m1, s1, m2, s2), None

  zeros = jnp.zeros((batch,), x.dtype)
  neg_inf = jnp.full((batch,), -jnp.inf, x.dtype)
  init = (zeros, zeros, neg_inf, zeros, neg_inf, zeros)
  (sum_ll, sum_sq, m1, s1, m2, s2), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
  return (kl_standard_normal(posterior), sum_ll, sum_sq, shift, _finish_lse(m1, s1),
          _finish_lse(m2, s2))


def _validate(x, num_samples, chunk_size) -> int:
  if not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
    raise EstimatorError(f'num_samples (K) must be a positive integer, got {num_samples!r}.')
  if chunk_size is None:
    chunk_size = num_samples
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
    raise EstimatorError(f'chunk_size must be a positive integer (or None for all K at '
                         f'once), got {chunk_size!r}.')
  if not isinstance(x, jax.core.Tracer):
    finite = np.isfinite(np.asarray(x))
    if not finite.all():
      bad = np.unique(np.nonzero(~finite.reshape(finite.shape[0], -1))[0])
      raise EstimatorError(f'input contains non-finite values (NaN or inf) in examples '
                           f'{bad[:10].tolist()}{" ..." if bad.size > 10 else ""}; '
                           'clean or drop them before scoring.')
  return int(min(chunk_size, num_samples))


def sample_stats(encode_fn: EncodeFn, log_likelihood_fn: LogLikelihoodFn, x: jax.Array,
                 key: jax.Array, num_samples: int, chunk_size: int | None = None) -> SampleStats:
  """K samples' statistics, chunked (a chunk size that does not divide K is padded and
  masked). x [B, ...], key: one key or [B] keys."""
  chunk_size = _validate(x, num_samples, chunk_size)
  return SampleStats(int(num_samples), *_sample_stats(encode_fn, log_likelihood_fn, x, key,
                                                      int(num_samples), chunk_size))


ESTIMATORS: dict[str, Callable[..., jax.Array]] = {}


def register(name: str):
  """Decorator: ``@register('name') def fn(stats: SampleStats) -> [B]``."""
  def wrap(reduce_fn):
    if name in ESTIMATORS:
      raise ValueError(f'estimator {name!r} is already registered.')

    @functools.wraps(reduce_fn)
    def estimator(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size=None):
      return reduce_fn(sample_stats(encode_fn, log_likelihood_fn, x, key, num_samples,
                                    chunk_size))
    estimator.reduce = reduce_fn
    ESTIMATORS[name] = estimator
    return estimator
  return wrap


def get(name: str):
  """The estimator ``fn(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size)``."""
  if name not in ESTIMATORS:
    raise EstimatorError(f'unknown estimator {name!r}; registered: {", ".join(sorted(ESTIMATORS))}.')
  return ESTIMATORS[name]


@register('elbo')
def elbo(stats: SampleStats) -> jax.Array:
  """ELBO = (1/K) Σ_k log p(x|z_k) − KL(q(z|x) || p(z)), z_k ~ q(z|x); ≤ log p(x). [B]."""
  return stats.sum_log_lik / stats.num_samples - stats.kl


@register('log_px')
def log_px(stats: SampleStats) -> jax.Array:
  """Importance-sampled log p(x) ≈ logsumexp_k[log p(x|z_k) + log p(z_k) − log q(z_k|x)]
  − log K, z_k ~ q(z|x). Its expectation is the IWAE bound, which rises to log p(x) as K
  grows (Burda et al., 2016). [B]."""
  return stats.lse_log_w - math.log(stats.num_samples)


@register('iwae')
def iwae(stats: SampleStats) -> jax.Array:
  """The K-sample IWAE bound; the same estimate as :func:`log_px`. [B]."""
  return log_px.reduce(stats)


def effective_sample_size(stats: SampleStats) -> jax.Array:
  """ESS = (Σ w)² / Σ w², in [1, K]. [B]."""
  return jnp.exp(2.0 * stats.lse_log_w - stats.lse_2log_w)


def log_px_stderr(stats: SampleStats) -> jax.Array:
  """Delta-method standard error of the log p(x) estimate: √((K/ESS − 1)/K). [B]."""
  k = stats.num_samples
  return jnp.sqrt(jnp.maximum(k / effective_sample_size(stats) - 1.0, 0.0) / k)


def elbo_stderr(stats: SampleStats) -> jax.Array:
  """Standard error of the Monte-Carlo ELBO: std_k(log p(x|z_k)) / √K. [B]."""
  k = stats.num_samples
  mean_shifted = (stats.sum_log_lik - k * stats.shift) / k
  var = jnp.maximum(stats.sum_sq_log_lik / k - jnp.square(mean_shifted), 0.0)
  return jnp.sqrt(var * k / max(k - 1, 1) / k)
