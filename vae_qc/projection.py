"""Test-time projection (Dehaene, Frigo, Combrexelle & Eline, ICLR 2020): an image moved, by a
few gradient steps, toward what the model finds likely, while staying close to itself.

  E(x') = −ELBO_μ(x') + λ Σ_ij |x'_ij − x_ij|,   r_t = |x'_t − x̂(x'_t)|,
  x'_{t+1} = clip(x'_t − clip(α ∇E(x'_t) ⊙ r_t², −r_t, r_t), 0, 1),   x'_0 = x,

with ELBO_μ(x') = log p(x'|z = μ(x')) − KL(q(z|x') || p(z)) (the decoder at the posterior mean:
one decoder pass per step, no sampling noise), x̂(x') = E[x|μ(x')] its reconstruction, λ =
``l1_weight`` (nats per unit of grey-level change) and α = ``rate``. The squared residual
tempers each pixel's step, as in the paper: pixels the model reconstructs well hardly move,
pixels it cannot explain move fast. The step is bounded by the residual itself (our
addition): the tempered step grows as the residual cubed and, unbounded, overshot and
diverged on the print surfaces. The L1 term's subgradient is 0 at a pixel that has not
moved. The projection map is (x − x*)² averaged over channels (``scores.pixel_maps``'
'projection'). The idea: unlike the residual x − x̂, the good pixels around a defect are
reconstructed from an image whose defect has been repaired, so the defect should not spread
into its neighbourhood. On the print validation sets it did not beat the residual map
(docs/print_study.md, "Test-time projection").

With a Gaussian of fixed σ the pull of the likelihood on a pixel is (x' − x̂)/σ² and the L1
term's λ, so (ignoring the model's own change) a pixel stops moving once its residual is below
λσ²: with σ = 0.1, λ = 5 lets residuals below 0.05 of the grey range stay where they are.
The energy is a sum over images, so each image's gradient is its own: a batch projects every
image independently, whatever it is batched with.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_qc import estimators
from vae_qc.errors import ConfigError


def check_settings(steps: int, rate: float, l1_weight: float) -> None:
  """ConfigError unless steps ≥ 1, rate > 0 and l1_weight ≥ 0 (config.eval.projection_*)."""
  if steps < 1:
    raise ConfigError(f'config.eval.projection_steps must be >= 1, got {steps}.')
  if not rate > 0:
    raise ConfigError(f'config.eval.projection_rate (the step size α) must be > 0, got {rate}.')
  if not l1_weight >= 0:
    raise ConfigError(f'config.eval.projection_l1 (λ, nats per unit of grey-level change) must '
                      f'be >= 0, got {l1_weight}; 0 lets the image move freely.')


def project(fns, x: jax.Array, *, steps: int, rate: float, l1_weight: float) -> jax.Array:
  """x* [B, H, W, C]: ``steps`` tempered gradient steps on E (module docstring) from x.

  fns: a ``models.ModelFns`` (eval mode); x: [B, H, W, C] in [0, 1].
  """
  x = jax.lax.stop_gradient(x)

  def neg_elbo(xp):  # −ELBO_μ, summed over the batch (each image's gradient is its own)
    posterior = fns.encode(xp)
    out = fns.decode(posterior.mean)
    log_lik = jnp.sum(fns.likelihood.log_prob(out, xp), axis=(-3, -2, -1))  # [B]
    kl = estimators.kl_standard_normal(posterior)
    return jnp.sum(kl - log_lik), fns.likelihood.mean(out)

  def step(xp, _):
    grad, mean = jax.grad(neg_elbo, has_aux=True)(xp)
    # λ·sign(x' − x), the L1 term's subgradient: 0 where a pixel has not moved
    grad = grad + l1_weight * jnp.sign(xp - x)
    residual = jnp.abs(xp - jax.lax.stop_gradient(mean))
    # The tempered step grows as the residual cubed: bounded by the residual itself, a pixel
    # can reach its reconstruction in one step but never overshoot it and diverge.
    move = jnp.clip(rate * grad * jnp.square(residual), -residual, residual)
    return jnp.clip(xp - move, 0.0, 1.0), None

  x_star, _ = jax.lax.scan(step, x, None, length=steps)
  return x_star


def projection_map(fns, x: jax.Array, *, steps: int, rate: float, l1_weight: float
                   ) -> jax.Array:
  """(x − x*)² averaged over channels [B, H, W], x* = :func:`project` (x)."""
  x_star = project(fns, x, steps=steps, rate=rate, l1_weight=l1_weight)
  return jnp.mean(jnp.square(x - x_star), axis=-1)
