"""Anomaly scores (bigger = more anomalous) and per-pixel anomaly maps.

A score is ``fn(fns: ModelFns, x [B, H, W, C], keys [B], eval_cfg) -> [B]``, registered by
name with ``@register('name')`` and chosen in ``config.eval.scores``. Every score of a run is
computed by :func:`compute`, the one function behind evaluation, sweeps and prediction.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_qc import estimators
from vae_qc.errors import ConfigError
from vae_qc.models import ModelFns

ScoreFn = Callable[[ModelFns, jax.Array, jax.Array, object], jax.Array]


@dataclasses.dataclass(frozen=True)
class Score:
  name: str
  fn: ScoreFn  # device part, traced inside jit
  # Optional host part: (images uint8 [B, H, W, C], device values [B]) -> [B].
  host_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
  doc: str = ''


SCORES: dict[str, Score] = {}


def register(name: str, host_fn=None):
  """Decorator registering a score ``fn(fns, x, keys, eval_cfg) -> [B]``."""
  def wrap(fn):
    if name in SCORES:
      raise ValueError(f'score {name!r} is already registered.')
    SCORES[name] = Score(name, fn, host_fn, (fn.__doc__ or '').strip().split('\n')[0])
    return fn
  return wrap


def get(names) -> list[Score]:
  unknown = [n for n in names if n not in SCORES]
  if unknown:
    raise ConfigError(f'unknown score(s) {", ".join(unknown)} in config.eval.scores; '
                      f'registered: {", ".join(sorted(SCORES))}.')
  if not names:
    raise ConfigError('config.eval.scores is empty; name at least one score.')
  return [SCORES[n] for n in names]


@register('neg_elbo')
def neg_elbo(fns, x, keys, eval_cfg):
  """−ELBO with K = eval.elbo_samples (the paper's score, K = 128)."""
  return -estimators.elbo(fns.encode, fns.log_likelihood, x, keys, eval_cfg.elbo_samples,
                          eval_cfg.chunk_size)


@register('neg_log_px')
def neg_log_px(fns, x, keys, eval_cfg):
  """−log p(x), importance-sampled with K = eval.log_px_samples."""
  return -estimators.log_px(fns.encode, fns.log_likelihood, x, keys, eval_cfg.log_px_samples,
                            eval_cfg.chunk_size)


@register('recon_error')
def recon_error(fns, x, keys, eval_cfg):
  """Σ_pixels (x − E[x|z=μ(x)])²: squared error of the reconstruction at the posterior mean."""
  del keys, eval_cfg
  mean = fns.likelihood.mean(fns.decode(fns.encode(x).mean))
  return jnp.sum(jnp.square(x - mean), axis=(-3, -2, -1))


@register('kl')
def kl(fns, x, keys, eval_cfg):
  """KL(q(z|x) || p(z)): how far the code of x is from the prior."""
  del keys, eval_cfg
  return estimators.kl_standard_normal(fns.encode(x))


def pixel_maps(fns: ModelFns, x: jax.Array, keys: jax.Array, num_samples: int) -> dict[str, jax.Array]:
  """Per-pixel anomaly maps ``[B, H, W]`` (summed over channels):

  * ``nll``: −E_q[log p(x_ij|z)], Monte-Carlo with ``num_samples`` samples of q(z|x);
  * ``abs_error``: |x − E[x̂]| with E[x̂] = E_q[E[x|z]], averaged over channels.
  """
  posterior = fns.encode(x)
  eps = jax.vmap(lambda k: jax.random.normal(k, (num_samples, posterior.mean.shape[-1])))(keys)
  z = posterior.mean + jnp.exp(posterior.log_scale) * jnp.swapaxes(eps, 0, 1)  # [S, B, L]
  out = fns.decode(z)
  nll = -jnp.mean(jnp.sum(fns.likelihood.log_prob(out, x), axis=-1), axis=0)
  mean = jnp.mean(fns.likelihood.mean(out), axis=0)
  return {'nll': nll, 'abs_error': jnp.mean(jnp.abs(x - mean), axis=-1),
          'reconstruction': mean}


def compute(fns: ModelFns, x: jax.Array, keys: jax.Array, names: tuple[str, ...],
            eval_cfg) -> dict[str, jax.Array]:
  """Device parts of the scores ``names`` for one batch: {name: [B]} (trace inside jit)."""
  return {s.name: s.fn(fns, x, keys, eval_cfg) for s in get(names)}


def finish(names, images: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Applies the host parts of the scores (e.g. complexity corrections) on numpy arrays."""
  out = dict(values)
  for s in get(names):
    if s.host_fn is not None:
      u8 = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
      out[s.name] = np.asarray(s.host_fn(u8, np.asarray(values[s.name])), np.float64)
  return out
