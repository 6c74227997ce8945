"""Monte-Carlo estimators of log p(x) for latent-variable models with a N(0, I) prior.

Protocol (any model plugs in, including toys with an exact log p(x)):

  encode_fn(x [B, ...]) -> Posterior(mean [B, L], log_scale [B, L])    # q(z|x), diagonal
  log_likelihood_fn(x [B, ...], z [S, B, L]) -> [S, B]                  # log p(x|z), summed

Every estimator is ``fn(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size) -> [B]``,
a log-likelihood (bigger = more likely), in nats per example. The posterior is encoded once;
the K samples are decoded ``chunk_size`` at a time inside a ``lax.scan`` that keeps running
statistics (a streaming log-sum-exp, a running mean and variance), so memory depends on
``chunk_size``, not on K. A chunk size that does not divide K is padded and masked.

Randomness. Sample k of example b is z_bk = μ_b + σ_b ε_bk with ε_bk ~ N(0, I) drawn from
``fold_in(key_b, k)``: an estimate does not depend on ``chunk_size``, and with one key per
example (``key`` of shape [B], as ``evaluate.image_keys`` makes) not on the batch the example
is in either. With a single key, key_b = split(key, B)[b] depends on the position b. All
estimators called with the same key share the first samples (common random numbers).

Compilation. Outside a trace, the sampling loop is ``jax.jit``-compiled with ``encode_fn``,
``log_likelihood_fn``, K and ``chunk_size`` static: pass the same function objects on every
call (not a new ``lambda`` or ``partial``) or it recompiles; inside your own ``jax.jit`` it is
simply inlined. Checks on values (non-finite input, NaN output) only run outside a trace;
inside one, validate the data first (``evaluate.check_images`` does).

Adding an estimator. An estimator reduces :class:`SampleStats` (per-example statistics of the
K importance weights w_k = p(x|z_k) p(z_k) / q(z_k|x)) to ``[B]``. Register it by name, and it
is available to :func:`get`, :func:`estimate` and to scores
(``scores.register_estimator_score``). When it needs a statistic the scan does not keep,
declare it as a streaming sum or log-sum-exp of a function of the :class:`Draws`. For example
the variational Rényi bound (Li & Turner, 2016),
L_α = 1/(1 − α) · log (1/K) Σ_k w_k^(1−α), which is log p̂ at α = 0 and the ELBO as α → 1:

  @estimators.register('vr_half', logsumexps={'lse_w_half': lambda d: 0.5 * d.log_w})
  def vr_half(stats):
    return 2.0 * (stats.extra['lse_w_half'] - math.log(stats.num_samples))

  estimators.get('vr_half')(encode_fn, log_likelihood_fn, x, key, 1000, 100)   # [B]
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Mapping, NamedTuple

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


class Draws(NamedTuple):
  """One chunk of S importance samples for B examples (what accumulators see)."""
  z: jax.Array  # [S, B, L], z ~ q(z|x)
  log_lik: jax.Array  # [S, B], log p(x|z)
  log_w: jax.Array  # [S, B], log w = log p(x|z) + log p(z) − log q(z|x)


class SampleStats(NamedTuple):
  """Statistics of the K importance samples, per example ``[B]``.

  With log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), z_k ~ q(z|x), k = 1..K.
  """
  num_samples: int  # K
  kl: jax.Array  # KL(q(z|x) || p(z)), analytic
  mean_log_lik: jax.Array  # (1/K) Σ_k log p(x|z_k)
  var_log_lik: jax.Array  # (1/K) Σ_k (log p(x|z_k) − mean_log_lik)²
  lse_log_w: jax.Array  # log Σ_k w_k
  lse_2log_w: jax.Array  # log Σ_k w_k²
  extra: dict[str, jax.Array]  # the accumulators an estimator declared, by name


# An accumulator: (name, 'sum' | 'logsumexp', fn(Draws) -> [S, B]). Hashable (a jit static).
Accumulator = tuple[str, str, Callable[[Draws], jax.Array]]


def _streaming_logsumexp(m, s, values):
  """Adds ``values`` [S, B] to a running (max m [B], Σ exp(v − m) s [B])."""
  m_new = jnp.maximum(m, jnp.max(values, axis=0))
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  s = s * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(values - m_safe), axis=0)
  return m_new, s


def _finish_lse(m, s):
  return jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(s)


def per_example_keys(key: jax.Array, batch: int) -> jax.Array:
  """A [B] array of keys from one key (split) or from [B] keys (returned as they are).

  Accepts typed keys (``jax.random.key``) and raw uint32 ones (``PRNGKey``, [2] or [B, 2]).
  """
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.ndim == 0:
    return jax.random.split(key, batch)
  if key.shape != (batch,):
    raise EstimatorError(f'key must be one key or one key per example [{batch}], '
                         f'got shape {key.shape}.')
  return key


def noise(keys: jax.Array, indices: jax.Array, latent: int, dtype=jnp.float32,
          antithetic: bool = False) -> jax.Array:
  """ε [S, B, L] ~ N(0, I), ε[s, b] drawn from ``fold_in(keys[b], indices[s])``.

  keys [B] (typed), indices [S] int: sample numbers, so that sample k of an example is the
  same whatever chunk (or batch) it is drawn in.

  ``antithetic``: samples come in pairs (ε, −ε): sample k is (−1)^k times the draw of
  ``fold_in(keys[b], k // 2)``. Each sample is still N(0, I), so every Monte-Carlo mean over
  them stays unbiased, but in a pair the part of a function of z that is odd about the
  posterior mean cancels: for E_q (x − μ(z))², the cross term 2 (x − μ(z̄)) · J σ ε, which
  dominates its noise where the residual is large (vae_qc.scores.pixel_maps). An odd S leaves
  its last sample unpaired; with S = 1 it is the plain draw.
  """
  def one(k, i):
    return jax.random.normal(jax.random.fold_in(k, i), (latent,), dtype)
  draws = jax.vmap(lambda i: jax.vmap(lambda k: one(k, i))(keys))(
      indices // 2 if antithetic else indices)
  if not antithetic:
    return draws
  return jnp.where(indices % 2 == 0, 1.0, -1.0).astype(dtype)[:, None, None] * draws


def _sample_stats_impl(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size,
                       extras: tuple[Accumulator, ...]):
  """The scan behind :func:`sample_stats`; returns its array fields as a tuple."""
  posterior = encode_fn(x)
  mean, log_scale = posterior
  batch = x.shape[0]
  if mean.ndim != 2 or mean.shape[0] != batch or log_scale.shape != mean.shape:
    raise EstimatorError(f'encode_fn(x [{batch}, ...]) must return Posterior(mean [B, L], '
                         f'log_scale [B, L]) with B = {batch}; got mean {mean.shape}, '
                         f'log_scale {log_scale.shape}.')
  latent = mean.shape[1]
  dtype = jnp.promote_types(mean.dtype, jnp.float32)  # accumulate in ≥ float32
  keys = per_example_keys(key, batch)
  n_chunks = -(-num_samples // chunk_size)

  def draw(indices):
    eps = noise(keys, indices, latent, mean.dtype)
    z = mean + jnp.exp(log_scale) * eps  # [S, B, L]
    log_lik = log_likelihood_fn(x, z)
    if log_lik.shape != (indices.shape[0], batch):
      raise EstimatorError(f'log_likelihood_fn(x, z [S, B, L] = {z.shape}) must return '
                           f'[S, B] = {(indices.shape[0], batch)} (log p(x|z) summed over '
                           f'the pixels), got {log_lik.shape}.')
    log_lik = log_lik.astype(dtype)
    log_w = log_lik + (log_normal(z, 0.0, 0.0) - log_normal(z, mean, log_scale)).astype(dtype)
    return Draws(z, log_lik, log_w)

  def body(carry, c):
    count, mean_ll, m2_ll, m1, s1, m2, s2, acc = carry
    indices = c * chunk_size + jnp.arange(chunk_size)
    valid = (indices < num_samples)[:, None]  # [S, 1]
    n_b = jnp.minimum(chunk_size, num_samples - c * chunk_size).astype(dtype)  # ≥ 1
    d = draw(indices)
    # Running mean and variance of log p(x|z), merged per chunk (Chan et al., 1979).
    ll = jnp.where(valid, d.log_lik, 0.0)
    mean_b = jnp.sum(ll, 0) / n_b
    m2_b = jnp.sum(jnp.where(valid, jnp.square(d.log_lik - mean_b), 0.0), 0)
    n = count + n_b
    delta = mean_b - mean_ll
    mean_ll = mean_ll + delta * (n_b / n)
    m2_ll = m2_ll + m2_b + jnp.square(delta) * (count * n_b / n)
    log_w = jnp.where(valid, d.log_w, -jnp.inf)
    m1, s1 = _streaming_logsumexp(m1, s1, log_w)
    m2, s2 = _streaming_logsumexp(m2, s2, 2.0 * log_w)
    new_acc = {}
    for name, kind, fn in extras:
      v = fn(d).astype(dtype)
      if kind == 'sum':
        new_acc[name] = acc[name] + jnp.sum(jnp.where(valid, v, 0.0), 0)
      else:
        new_acc[name] = _streaming_logsumexp(*acc[name], jnp.where(valid, v, -jnp.inf))
    return (n, mean_ll, m2_ll, m1, s1, m2, s2, new_acc), None

  zeros = jnp.zeros((batch,), dtype)
  neg_inf = jnp.full((batch,), -jnp.inf, dtype)
  acc0 = {name: zeros if kind == 'sum' else (neg_inf, zeros) for name, kind, _ in extras}
  init = (jnp.zeros((), dtype), zeros, zeros, neg_inf, zeros, neg_inf, zeros, acc0)
  (_, mean_ll, m2_ll, m1, s1, m2, s2, acc), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
  extra = {name: acc[name] if kind == 'sum' else _finish_lse(*acc[name])
           for name, kind, _ in extras}
  return (kl_standard_normal(posterior).astype(dtype), mean_ll, m2_ll / num_samples,
          _finish_lse(m1, s1), _finish_lse(m2, s2), extra)


_sample_stats_jit = jax.jit(_sample_stats_impl, static_argnums=(0, 1, 4, 5, 6))


def _is_traced(*arrays) -> bool:
  return any(isinstance(a, jax.core.Tracer) for a in arrays)


def _check_positive_int(value, what: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
      or value <= 0:
    raise EstimatorError(f'{what} must be a positive integer, got {value!r}.')
  return int(value)


def check_finite(x, what: str = 'input') -> None:
  """EstimatorError naming the examples of x [B, ...] with NaN or inf (no-op under a trace)."""
  if _is_traced(x):
    return
  finite = np.isfinite(np.asarray(x, dtype=np.float64).reshape(np.shape(x)[0], -1)).all(axis=1)
  if not finite.all():
    bad = np.nonzero(~finite)[0]
    raise EstimatorError(f'{what} contains non-finite values (NaN or inf) in examples '
                         f'{bad[:10].tolist()}{" ..." if bad.size > 10 else ""}; '
                         'clean or drop them before scoring.')


def _normalise_extras(sums, logsumexps) -> tuple[Accumulator, ...]:
  extras = [(n, 'sum', f) for n, f in (sums or {}).items()]
  extras += [(n, 'logsumexp', f) for n, f in (logsumexps or {}).items()]
  names = [n for n, _, _ in extras]
  if len(set(names)) != len(names):
    raise EstimatorError(f'accumulator names must be unique, got {names}.')
  return tuple(sorted(extras, key=lambda e: e[0]))


def sample_stats(encode_fn: EncodeFn, log_likelihood_fn: LogLikelihoodFn, x: jax.Array,
                 key: jax.Array, num_samples: int, chunk_size: int | None = None, *,
                 sums: Mapping[str, Callable[[Draws], jax.Array]] | None = None,
                 logsumexps: Mapping[str, Callable[[Draws], jax.Array]] | None = None
                 ) -> SampleStats:
  """Statistics of K importance samples per example, decoded ``chunk_size`` at a time.

  Args:
    encode_fn, log_likelihood_fn: the model (see the module docstring).
    x: [B, ...] inputs.
    key: one key, or one key per example [B] (typed or raw).
    num_samples: K ≥ 1.
    chunk_size: samples decoded at once (≥ 1; None or ≥ K: all at once).
    sums, logsumexps: extra accumulators {name: fn(Draws) -> [S, B]}, kept as Σ_k fn and
      log Σ_k exp(fn) in ``SampleStats.extra[name]`` [B].
  Returns:
    SampleStats with [B] fields.
  Raises:
    EstimatorError: K or chunk_size not a positive integer, non-finite x, wrong shapes.
  """
  num_samples = _check_positive_int(num_samples, 'num_samples (K)')
  chunk_size = num_samples if chunk_size is None else _check_positive_int(
      chunk_size, 'chunk_size (or None for all K at once)')
  chunk_size = min(chunk_size, num_samples)
  if np.ndim(x) < 1:
    raise EstimatorError(f'x must have a batch axis [B, ...], got shape {np.shape(x)}.')
  check_finite(x)
  extras = _normalise_extras(sums, logsumexps)
  core = _sample_stats_impl if _is_traced(x, key) else _sample_stats_jit
  return SampleStats(num_samples, *core(encode_fn, log_likelihood_fn, x, key, num_samples,
                                        chunk_size, extras))


class _Entry(NamedTuple):
  reduce: Callable[[SampleStats], jax.Array]
  sums: Mapping[str, Callable[[Draws], jax.Array]]
  logsumexps: Mapping[str, Callable[[Draws], jax.Array]]


ESTIMATORS: dict[str, Callable[..., jax.Array]] = {}
_ENTRIES: dict[str, _Entry] = {}


def _check_output(value: jax.Array, name: str) -> jax.Array:
  if not _is_traced(value):
    nan = np.isnan(np.asarray(value))
    if nan.any():
      raise EstimatorError(f'estimator {name!r} returned NaN for examples '
                           f'{np.nonzero(nan)[0][:10].tolist()}: the model (encode_fn or '
                           'log_likelihood_fn) produced NaN; check its parameters.')
  return value


def register(name: str, *, sums: Mapping[str, Callable[[Draws], jax.Array]] | None = None,
             logsumexps: Mapping[str, Callable[[Draws], jax.Array]] | None = None,
             replace: bool = False):
  """Decorator: ``@register('name') def reduce(stats: SampleStats) -> [B]``.

  Registers the estimator ``fn(encode_fn, log_likelihood_fn, x, key, num_samples,
  chunk_size=None) -> [B]`` under ``name`` and returns it (``fn.reduce`` is the reduction).
  ``sums`` / ``logsumexps``: extra accumulators the reduction reads from ``stats.extra`` (see
  :func:`sample_stats`). ``replace``: allow re-registering a name.
  """
  _normalise_extras(sums, logsumexps)  # validates the names

  def wrap(reduce_fn):
    if name in ESTIMATORS and not replace:
      raise ValueError(f'estimator {name!r} is already registered (pass replace=True).')

    @functools.wraps(reduce_fn)
    def estimator(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size=None):
      stats = sample_stats(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size,
                           sums=sums, logsumexps=logsumexps)
      return _check_output(reduce_fn(stats), name)
    estimator.reduce = reduce_fn
    ESTIMATORS[name] = estimator
    _ENTRIES[name] = _Entry(reduce_fn, dict(sums or {}), dict(logsumexps or {}))
    return estimator
  return wrap


def unregister(name: str) -> None:
  """Removes an estimator (tests, notebooks)."""
  ESTIMATORS.pop(name, None)
  _ENTRIES.pop(name, None)


def get(name: str):
  """The estimator ``fn(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size)``."""
  if name not in ESTIMATORS:
    raise EstimatorError(f'unknown estimator {name!r}; registered: '
                         f'{", ".join(sorted(ESTIMATORS))}.')
  return ESTIMATORS[name]


@register('elbo')
def elbo(stats: SampleStats) -> jax.Array:
  """ELBO = (1/K) Σ_k log p(x|z_k) − KL(q(z|x) || p(z)), z_k ~ q(z|x); its expectation is
  ≤ log p(x), with equality iff q(z|x) = p(z|x). The KL is analytic. [B]."""
  return stats.mean_log_lik - stats.kl


@register('log_px')
def log_px(stats: SampleStats) -> jax.Array:
  """Importance-sampled log p̂(x) = log (1/K) Σ_k w_k, w_k = p(x|z_k) p(z_k) / q(z_k|x),
  z_k ~ q(z|x). p̂ is unbiased for p(x); log p̂ is biased low (Jensen): its expectation is the
  K-sample IWAE bound, which rises monotonically to log p(x) as K grows (Burda et al., 2016),
  with bias ≈ −(K/ESS − 1) / (2K) for large K. [B]."""
  return stats.lse_log_w - math.log(stats.num_samples)


@register('iwae')
def iwae(stats: SampleStats) -> jax.Array:
  """The K-sample IWAE bound; the same estimate as :func:`log_px`. [B]."""
  return log_px.reduce(stats)


def effective_sample_size(stats: SampleStats) -> jax.Array:
  """Kish's ESS = (Σ_k w_k)² / Σ_k w_k², in [1, K]; K iff all weights are equal. [B]."""
  return jnp.exp(2.0 * stats.lse_log_w - stats.lse_2log_w)


def log_px_stderr(stats: SampleStats) -> jax.Array:
  """Delta-method standard error of log p̂(x): √(V̂ar(w) / (K w̄²)) = √((K/ESS − 1)/K). [B].

  It ignores the (negative) bias of log p̂ and is itself unreliable when the weights are
  heavy-tailed (small ESS): read it together with the ESS. 0 when all weights are equal.
  """
  k = stats.num_samples
  return jnp.sqrt(jnp.maximum(k / effective_sample_size(stats) - 1.0, 0.0) / k)


def elbo_stderr(stats: SampleStats) -> jax.Array:
  """Standard error of the Monte-Carlo ELBO: s_k(log p(x|z_k)) / √K with the unbiased sample
  standard deviation s_k (the KL term is analytic). inf for K = 1 (unknown). [B]."""
  k = stats.num_samples
  if k == 1:
    return jnp.full_like(stats.mean_log_lik, jnp.inf)
  return jnp.sqrt(stats.var_log_lik / (k - 1))


DIAGNOSTICS = {'ess': effective_sample_size, 'log_px_stderr': log_px_stderr,
               'elbo_stderr': elbo_stderr}


def estimate(names, encode_fn: EncodeFn, log_likelihood_fn: LogLikelihoodFn, x: jax.Array,
             key: jax.Array, num_samples: int, chunk_size: int | None = None
             ) -> dict[str, jax.Array]:
  """Several estimators and diagnostics from one pass over the same K samples.

  ``names``: registered estimators and/or diagnostics ('ess', 'log_px_stderr',
  'elbo_stderr'). Returns {name: [B]}. The estimators' accumulators are merged by name, so
  give yours names specific to your estimator.
  """
  unknown = [n for n in names if n not in ESTIMATORS and n not in DIAGNOSTICS]
  if unknown:
    raise EstimatorError(f'unknown estimator(s) {unknown}; registered: '
                         f'{", ".join(sorted(ESTIMATORS))}; diagnostics: '
                         f'{", ".join(sorted(DIAGNOSTICS))}.')
  sums, lses = {}, {}
  for n in names:
    if n in _ENTRIES:
      sums.update(_ENTRIES[n].sums)
      lses.update(_ENTRIES[n].logsumexps)
  stats = sample_stats(encode_fn, log_likelihood_fn, x, key, num_samples, chunk_size,
                       sums=sums, logsumexps=lses)
  return {n: _check_output(_ENTRIES[n].reduce(stats) if n in _ENTRIES else DIAGNOSTICS[n](stats),
                           n) for n in names}
