"""Likelihood regret (Xiao, Yan & Amit, NeurIPS 2020): how much a bound on log p(x) improves
when the posterior is refitted to x alone instead of predicted by the amortised encoder.

  regret(x) = B(x; q*_x) − B(x; q_φ(·|x)),   q*_x = argmax_q ELBO(x; q) found by gradient ascent

B is a bound on log p(x) evaluated with the same K samples ε (common random numbers) for both
posteriors: the ELBO, or the importance-weighted bound of ``estimators.log_px`` (with K → ∞ it
no longer depends on q, so the regret lives in the bound's gap). The encoder was fitted to the
training images, so it predicts a good posterior for images like them; for an image unlike
them the refit finds a much better one. Bigger = more anomalous, nats; ≥ 0 up to Monte-Carlo
noise, and 0 when the encoder's posterior is already the best (e.g. the exact posterior of a
linear-Gaussian model).

The refit optimises each image's (μ, log σ) directly, starting from the encoder's, with Adam
(its rate decayed to 0 by a cosine schedule) on the negative ELBO (``num_samples`` fresh
samples per step, drawn from ``fold_in(key_b, REFIT_STREAM + ...)``, apart from the K
evaluation samples 0..K−1). Adam is elementwise and the objective is a sum over images, so one
batched optimiser refits every image independently: no copy of the encoder is trained, and
the refit of an image does not depend on its batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vae_qc import estimators
from vae_qc.models import Posterior

# Sample numbers of the refit's noise start here, far from the estimators' 0..K-1.
REFIT_STREAM = 1 << 24


def refit_posterior(log_likelihood_fn: estimators.LogLikelihoodFn, x: jax.Array,
                    init: Posterior, keys: jax.Array, *, steps: int, learning_rate: float,
                    num_samples: int = 1) -> Posterior:
  """q*_x [B, L]: ``steps`` Adam steps (rate ``learning_rate`` decayed to 0 by a cosine) on
  −ELBO(x; q) over each image's (μ, log σ).

  x [B, H, W, C]; init: the starting posterior [B, L] (the encoder's); keys: [B] keys (or one).
  """
  keys = estimators.per_example_keys(keys, x.shape[0])
  latent = init.mean.shape[-1]
  # The rate decays to 0 (cosine): a constant one leaves the last iterate jittering around the
  # optimum by ~rate, which costs the refitted bound a few hundredths of a nat.
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1)))

  def neg_elbo(params, step):
    mean, log_scale = params
    eps = estimators.noise(keys, REFIT_STREAM + step * num_samples + jnp.arange(num_samples),
                           latent, mean.dtype)  # [S, B, L]
    z = mean + jnp.exp(log_scale) * eps
    log_lik = jnp.mean(log_likelihood_fn(x, z), axis=0)  # [B]
    kl = estimators.kl_standard_normal(Posterior(mean, log_scale))
    return jnp.sum(kl - log_lik)  # a sum: each image's gradient is its own

  def step_fn(carry, step):
    params, opt_state = carry
    grads = jax.grad(neg_elbo)(params, step)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  params = (jax.lax.stop_gradient(init.mean), jax.lax.stop_gradient(init.log_scale))
  (params, _), _ = jax.lax.scan(step_fn, (params, optimizer.init(params)), jnp.arange(steps))
  return Posterior(*params)


def likelihood_regret(encode_fn: estimators.EncodeFn,
                      log_likelihood_fn: estimators.LogLikelihoodFn, x: jax.Array,
                      keys: jax.Array, *, bound: str = 'elbo', bound_samples: int = 128,
                      chunk_size: int | None = None, steps: int = 50,
                      learning_rate: float = 0.05, refit_samples: int = 1) -> jax.Array:
  """B(x; q*_x) − B(x; q_φ(·|x)) [B], nats (see the module docstring).

  bound: a registered estimator ('elbo', 'log_px', ...) evaluated with K = ``bound_samples``
  (chunks of ``chunk_size``), the same samples for both posteriors.
  """
  keys = estimators.per_example_keys(keys, x.shape[0])
  amortised = encode_fn(x)
  refitted = refit_posterior(log_likelihood_fn, x, amortised, keys, steps=steps,
                             learning_rate=learning_rate, num_samples=refit_samples)
  before = estimators.estimate((bound,), lambda _: amortised, log_likelihood_fn, x, keys,
                               bound_samples, chunk_size)[bound]
  after = estimators.estimate((bound,), lambda _: refitted, log_likelihood_fn, x, keys,
                              bound_samples, chunk_size)[bound]
  return after - before
