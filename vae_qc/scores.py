"""Anomaly scores (bigger = more anomalous) and per-pixel anomaly maps.

A score is ``fn(fns: ModelFns, x [B, H, W, C], keys [B], eval_cfg) -> [B]``, registered by
name with ``@register('name')`` and chosen in ``config.eval.scores``. A score may add a host
part ``host_fn(images uint8 [B, H, W, C], device values [B]) -> [B]`` (numpy, outside jit),
e.g. a compressed length. Every score of a run is computed by :func:`compute` (device part,
inside jit) then :func:`finish` (host part): the one path behind evaluation, sweeps and
prediction.

Scores built in: ``neg_elbo``, ``neg_log_px``, ``recon_error``, ``kl``; the complexity-
corrected ``neg_log_px_minus_complexity`` and ``neg_elbo_minus_complexity`` (Serrà et al.,
2020) with their parts ``neg_log_p_8bit`` and ``complexity``; the latent-space density
``latent_nll`` and ``neg_elbo_plus_latent``; likelihood regret ``likelihood_regret`` and
``likelihood_regret_iw`` (Xiao et al., 2020); the background likelihood ratio
``background_ratio`` and ``background_ratio_elbo`` (Ren et al., 2019). Any registered
estimator becomes a score with :func:`register_estimator_score`. (The seed ensemble's WAIC,
Choi et al. 2018, combines runs: ``vae_qc.tables.waic``.)

Map scores (``map_max``, ``map_max_excess``, ``map_topk``, the unsmoothed ``_raw`` forms and
the log-ratio forms ``map_max_logratio``, ``map_topk_logratio``) summarise the per-pixel map
of the whole image (stitched from tiles where the image was tiled): a score with a
``map_fn(map [H, W], eval_cfg) -> float`` instead of a device part, computed by
:func:`map_values` after the maps (see :func:`register_map_score`).

Units: nats per image; :func:`bits_per_dim` converts a log-likelihood for display.
"""
from __future__ import annotations

import collections.abc
from collections.abc import Iterator, Mapping
import contextvars
import dataclasses
import math
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from vae_qc import complexity as complexity_lib
from vae_qc import estimators
from vae_qc import inpaint as inpaint_lib
from vae_qc import latent_density
from vae_qc import level as level_lib
from vae_qc import likelihoods
from vae_qc import projection as projection_lib
from vae_qc import refit
from vae_qc.errors import ConfigError
from vae_qc.models import ModelFns

ScoreFn = Callable[[ModelFns, jax.Array, jax.Array, object], jax.Array]
HostFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Score:
  name: str
  fn: ScoreFn  # device part, traced inside jit: (fns, x [B, H, W, C], keys [B], eval_cfg) -> [B]
  # Optional host part: (images uint8 [B, H, W, C], device values [B]) -> [B].
  host_fn: HostFn | None = None
  doc: str = ''
  needs_8bit: bool = False  # needs log P of the 8-bit image (complexity corrections)
  # Map scores: (map [H, W] float, eval_cfg) -> float, from the image's whole map; fn is None.
  map_fn: Callable[[np.ndarray, object], float] | None = None
  map_smooth: bool = False  # map_fn reads the smoothed map ('<map>_smooth'), not the raw one
  map_form: str = ''  # 'logratio': map_fn reads '<map>_logratio' (log_ratio of the smoothed map)
  # What the score needs beside the model (``ModelFns.aux``, made by ``vae_qc.aux``):
  # 'latent_gmm' (a mixture over the training codes), 'background' (a background model).
  needs: tuple[str, ...] = ()


SCORES: dict[str, Score] = {}


def register(name: str, host_fn: HostFn | None = None, *, doc: str | None = None,
             needs_8bit: bool = False, needs: tuple[str, ...] = (), replace: bool = False):
  """Decorator registering a score ``fn(fns, x, keys, eval_cfg) -> [B]`` (bigger = more
  anomalous), with an optional host part. ``doc`` defaults to the docstring's first line;
  ``needs_8bit``: the score needs log P of the 8-bit image (see :func:`check_compatible`);
  ``needs``: the ``fns.aux`` entries it reads ('latent_gmm', 'background'), which the study
  then fits or trains after the model (``vae_qc.aux``)."""
  def wrap(fn):
    if name in SCORES and not replace:
      raise ValueError(f'score {name!r} is already registered (pass replace=True).')
    SCORES[name] = Score(name, fn, host_fn,
                         doc if doc is not None else (fn.__doc__ or '').strip().split('\n')[0],
                         needs_8bit, needs=tuple(needs))
    return fn
  return wrap


def needed_aux(names) -> tuple[str, ...]:
  """The ``fns.aux`` entries the scores ``names`` need, in a fixed order."""
  wanted = {n for s in get(names) for n in s.needs}
  return tuple(n for n in ('latent_gmm', 'background') if n in wanted)


def _aux(fns: ModelFns, name: str):
  try:
    return fns.aux[name]
  except (KeyError, TypeError) as e:
    what = {'latent_gmm': 'the Gaussian mixture over the training codes',
            'background': 'the background model'}[name]
    raise ConfigError(f'this score needs {what} ({name!r}), which the model at hand does not '
                      'carry. The study makes it when the score is in config.eval.scores: '
                      're-run the study with the score listed (training resumes from the '
                      'checkpoint; only the missing part is made).') from e


def unregister(name: str) -> None:
  """Removes a score (tests, notebooks)."""
  SCORES.pop(name, None)


def get(names) -> list[Score]:
  unknown = [n for n in names if n not in SCORES]
  if unknown:
    raise ConfigError(f'unknown score(s) {", ".join(unknown)} in config.eval.scores; '
                      f'registered: {", ".join(sorted(SCORES))}.')
  if not names:
    raise ConfigError('config.eval.scores is empty; name at least one score.')
  return [SCORES[n] for n in names]


def check_compatible(names, likelihood: likelihoods.Likelihood, num_dims: int = 1) -> None:
  """Raises ConfigError before any training if a score in ``names`` cannot be computed with
  ``likelihood`` (a complexity correction with a Bernoulli likelihood)."""
  for s in get(names):
    if s.needs_8bit:
      likelihoods.log_prob_8bit_offset(likelihood, num_dims)


# ------------------------------------------------------------------------------------ units
def bits_per_dim(log_px_nats, num_dims: int):
  """Code length in bits per dimension of a log-likelihood: −log p / (D ln 2).

  log_px_nats: log-likelihoods in nats per image (bigger = better), any shape; num_dims:
  D = H·W·C. Returns bits/dim (smaller = better), same shape. For a density on [0, 1]
  (Gaussian likelihoods) convert first with ``likelihoods.log_prob_8bit`` to get the bits/dim
  of the 8-bit image, the number comparable across models and with compressors (8 = raw).
  """
  return -log_px_nats / (num_dims * math.log(2.0))


def nats_to_bits(nats):
  """nats / ln 2."""
  return nats / math.log(2.0)


# --------------------------------------------------------------------- likelihood scores
def _samples(eval_cfg, field: str) -> int:
  try:
    return getattr(eval_cfg, field)
  except AttributeError as e:
    raise ConfigError(f'a score needs config.eval.{field}.') from e


# Within one :func:`compute` call (one batch), scores that need the same estimate (e.g.
# neg_log_px and neg_log_px_minus_complexity) share it instead of sampling it twice.
_BATCH_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar('_BATCH_CACHE',
                                                                          default=None)


def _neg_estimate(fns, x, keys, eval_cfg, estimator: str, samples_field: str):
  """−estimator(x) [B] with K = eval_cfg.<samples_field>, shared within a compute() call."""
  num_samples = _samples(eval_cfg, samples_field)
  cache = _BATCH_CACHE.get()
  cache_key = (estimator, num_samples, eval_cfg.chunk_size)
  if cache is not None and cache_key in cache:
    return cache[cache_key]
  # The ELBO and log p(x) are two reductions of the same K samples: with equal K one pass
  # serves both (the paper's neg_elbo and neg_log_px at K = 128 cost one).
  together = ('elbo', 'log_px') if estimator in ('elbo', 'log_px') else (estimator,)
  values = estimators.estimate(together, fns.encode, fns.log_likelihood, x, keys, num_samples,
                               eval_cfg.chunk_size)
  if cache is not None:
    cache.update({(name, num_samples, eval_cfg.chunk_size): -v for name, v in values.items()})
  return -values[estimator]


def register_estimator_score(name: str, estimator: str, samples_field: str = 'log_px_samples',
                             *, doc: str | None = None, replace: bool = False) -> Score:
  """Registers the score −estimator(x), K = ``eval_cfg.<samples_field>`` (chunked with
  ``eval_cfg.chunk_size``). ``estimator`` is looked up when the score runs, so it may be
  registered later. Returns the Score."""
  def fn(fns, x, keys, eval_cfg):
    return _neg_estimate(fns, x, keys, eval_cfg, estimator, samples_field)
  register(name, doc=doc or f'−{estimator}(x) with K = eval.{samples_field}.',
           replace=replace)(fn)
  return SCORES[name]


register_estimator_score('neg_elbo', 'elbo', 'elbo_samples',
                         doc='−ELBO with K = eval.elbo_samples (the paper\'s score, K = 128).')
register_estimator_score('neg_log_px', 'log_px', 'log_px_samples',
                         doc='−log p(x), importance-sampled with K = eval.log_px_samples.')


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


# ------------------------------------------------------------------ latent-space density
@register('latent_nll', needs=('latent_gmm',))
def latent_nll(fns, x, keys, eval_cfg):
  """−log p_GMM(μ(x)): the encoder mean's density under a Gaussian mixture (eval.latent_
  components) fitted on the training images' means (``vae_qc.latent_density``), nats."""
  del keys, eval_cfg
  return -latent_density.log_density(_aux(fns, 'latent_gmm'), fns.encode(x).mean)


@register('neg_elbo_plus_latent', needs=('latent_gmm',))
def neg_elbo_plus_latent(fns, x, keys, eval_cfg):
  """−ELBO (K = eval.elbo_samples) − log p_GMM(μ(x)): the paper's score plus the code's
  density (``latent_nll``), nats."""
  return (_neg_estimate(fns, x, keys, eval_cfg, 'elbo', 'elbo_samples') +
          latent_nll(fns, x, keys, eval_cfg))


# ---------------------------------------------------------------------- likelihood regret
def _regret(fns, x, keys, eval_cfg, bound: str, samples_field: str):
  """``refit.likelihood_regret`` with its parts shared within the batch: one refit serves both
  regret scores, the amortised bound is the one of neg_elbo / neg_log_px, and the refitted
  posterior's ELBO and log p̂ come from one pass when their K are equal."""
  cache = _BATCH_CACHE.get()
  cache = {} if cache is None else cache
  num_samples = _samples(eval_cfg, samples_field)
  if 'regret_refit' not in cache:
    cache['regret_refit'] = refit.refit_posterior(
        fns.log_likelihood, x, fns.encode(x), keys, steps=_samples(eval_cfg, 'regret_steps'),
        learning_rate=_samples(eval_cfg, 'regret_lr'),
        num_samples=_samples(eval_cfg, 'regret_samples'))
  after_key = ('regret_after', bound, num_samples)
  if after_key not in cache:
    refitted = cache['regret_refit']
    together = ('elbo', 'log_px') if bound in ('elbo', 'log_px') else (bound,)
    values = estimators.estimate(together, lambda _: refitted, fns.log_likelihood, x, keys,
                                 num_samples, eval_cfg.chunk_size)
    cache.update({('regret_after', name, num_samples): v for name, v in values.items()})
  before = -_neg_estimate(fns, x, keys, eval_cfg, bound, samples_field)
  return cache[after_key] - before


@register('likelihood_regret')
def likelihood_regret(fns, x, keys, eval_cfg):
  """ELBO(x; q*_x) − ELBO(x; q_φ), K = eval.elbo_samples: the gain of refitting the posterior
  to x alone (eval.regret_steps Adam steps of rate eval.regret_lr), Xiao et al. 2020, nats."""
  return _regret(fns, x, keys, eval_cfg, 'elbo', 'elbo_samples')


@register('likelihood_regret_iw')
def likelihood_regret_iw(fns, x, keys, eval_cfg):
  """The regret in the importance-weighted bound log p̂(x), K = eval.log_px_samples
  (``likelihood_regret`` with the tighter bound), nats."""
  return _regret(fns, x, keys, eval_cfg, 'log_px', 'log_px_samples')


# ----------------------------------------------------------- background likelihood ratio
def _background_ratio(fns, x, keys, eval_cfg, estimator: str, samples_field: str):
  background = _aux(fns, 'background')
  log_bg = estimators.estimate((estimator,), background.encode, background.log_likelihood, x,
                               keys, _samples(eval_cfg, samples_field),
                               eval_cfg.chunk_size)[estimator]
  return log_bg + _neg_estimate(fns, x, keys, eval_cfg, estimator, samples_field)


@register('background_ratio', needs=('background',))
def background_ratio(fns, x, keys, eval_cfg):
  """log p_bg(x) − log p(x) (Ren et al., 2019), both importance-sampled with K =
  eval.log_px_samples; p_bg: the same VAE trained on the normal images with a fraction
  (config.background.noise_rate) of pixels replaced by uniform noise, nats."""
  return _background_ratio(fns, x, keys, eval_cfg, 'log_px', 'log_px_samples')


@register('background_ratio_elbo', needs=('background',))
def background_ratio_elbo(fns, x, keys, eval_cfg):
  """ELBO_bg(x) − ELBO(x), K = eval.elbo_samples: ``background_ratio`` with the ELBO, nats."""
  return _background_ratio(fns, x, keys, eval_cfg, 'elbo', 'elbo_samples')


# --------------------------------------------------------------------- complexity scores
def neg_log_p_8bit(fns, x, keys, eval_cfg, estimator: str = 'log_px',
                   samples_field: str = 'log_px_samples'):
  """−log P(x̃) in nats of the 8-bit image x̃ = round(255 x): [B].

  With a discretised likelihood ('uint8' support) this is −log p̂(x) itself; with a density
  on [0, 1] (the Gaussians) it is −log p̂(x) + D log 255 (see ``likelihoods.log_prob_8bit``),
  which is only as good as the density is flat across a bin: a warning says so. Bernoulli:
  ConfigError (no distribution over grey values).
  """
  lik = fns.likelihood
  offset = likelihoods.log_prob_8bit_offset(lik, math.prod(x.shape[1:]))  # raises early
  if lik.support == 'density':
    logging.warning(
        'Complexity correction with the continuous likelihood %r: −log P(8-bit x) is taken as '
        '−log p(x) + D·log 255 (bin width 1/255), which assumes the density is flat across a '
        'bin. A density this broad (e.g. σ = 0.71) codes every pixel at ~log 255 nats, so the '
        'score is dominated by −L(x). Train with a discretised likelihood '
        "(config.model.likelihood='discretized_logistic') for a sound correction.", lik.name)
  return _neg_estimate(fns, x, keys, eval_cfg, estimator, samples_field) - offset


def register_complexity_score(name: str, estimator: str = 'log_px',
                              samples_field: str = 'log_px_samples', compressor: str = 'png',
                              *, replace: bool = False) -> Score:
  """Registers S(x) = −log P(x̃) − L(x̃) (Serrà et al., 2020) in nats, x̃ the 8-bit image.

  −log P(x̃) = −``estimator`` (K = ``eval_cfg.<samples_field>``) converted to the 8-bit image
  (:func:`neg_log_p_8bit`, on device); L(x̃) = its ``compressor`` length in nats (host part).
  Both are code lengths of the same 8-bit image, so S is a log-likelihood ratio between a
  generic compressor and the model: bigger = the model explains x worse than its complexity
  predicts = more anomalous.
  """
  if compressor not in complexity_lib.COMPRESSORS:
    raise ConfigError(f'unknown compressor {compressor!r}; choose one of '
                      f'{", ".join(complexity_lib.COMPRESSORS)}.')

  def fn(fns, x, keys, eval_cfg):
    return neg_log_p_8bit(fns, x, keys, eval_cfg, estimator, samples_field)

  def host_fn(images_u8, neg_log_p):
    return np.asarray(neg_log_p, np.float64) - complexity_lib.compressed_nats(images_u8,
                                                                              compressor)
  register(name, host_fn, needs_8bit=True, replace=replace,
           doc=f'−log P(8-bit x) − L_{compressor}(x): −{estimator} (K = eval.{samples_field}) '
               f'minus the {compressor} length, in nats (Serrà et al., 2020).')(fn)
  return SCORES[name]


register_complexity_score('neg_log_px_minus_complexity', 'log_px', 'log_px_samples', 'png')
register_complexity_score('neg_elbo_minus_complexity', 'elbo', 'elbo_samples', 'png')


@register('neg_log_p_8bit', needs_8bit=True,
          doc='−log P(8-bit x) in nats: −log p̂(x), converted to the 8-bit image for densities.')
def _neg_log_p_8bit_score(fns, x, keys, eval_cfg):
  return neg_log_p_8bit(fns, x, keys, eval_cfg)


@register('complexity', lambda images_u8, _: complexity_lib.compressed_nats(images_u8, 'png'),
          doc='L(x): the PNG length of the 8-bit image in nats (a diagnostic, not a detector).')
def _complexity_score(fns, x, keys, eval_cfg):
  del fns, keys, eval_cfg
  return jnp.zeros(x.shape[:1], x.dtype)


# ----------------------------------------------------------------------------------- maps
def pixel_maps(fns: ModelFns, x: jax.Array, keys: jax.Array,
               num_samples: int, projection: dict[str, Any] | None = None,
               encoder_input: jax.Array | None = None, with_kl: bool = False,
               antithetic: bool = False) -> dict[str, jax.Array]:
  """Per-pixel anomaly maps of x [B, H, W, C] with S = ``num_samples`` samples z_s ~ q(z|x):

  * ``nll`` [B, H, W]: −(1/S) Σ_s Σ_c log p(x_hwc|z_s). Summed over the pixels it is
    −(ELBO + KL), the Monte-Carlo reconstruction term of :func:`estimators.elbo` for the same
    keys and K = S (the samples are the estimators' ones: sample s from fold_in(key_b, s));
  * ``abs_error`` [B, H, W]: |x − E[x̂]| averaged over channels, E[x̂] = (1/S) Σ_s E[x|z_s];
  * ``sq_error`` [B, H, W]: (1/S) Σ_s (x − E[x|z_s])² averaged over channels. With a Gaussian
    of fixed σ it is the part of ``nll`` above its floor: nll = C·sq_error / (2σ²) +
    C·log(σ√(2π)), so ratios of ``sq_error`` are ratios of that excess likelihood;
  * ``z_error`` [B, H, W]: (1/S) Σ_s ((x − E[x|z_s]) / σ_s)² averaged over channels, the
    squared residual in units of the likelihood's own scale σ_s (σ = 1 for a likelihood
    without one). With a decoder that predicts σ per pixel (``*_hetero``) it is the part of
    ``nll`` that is surprise, 2·nll = C·z_error + 2 Σ_c log σ + C·log 2π: a pixel where the
    model expects a large residual (an edge it cannot place exactly) is not flagged for it.
    With a fixed σ it is sq_error / σ², the same ratios;
  * ``reconstruction`` [B, H, W, C]: E[x̂];
  * ``projection`` [B, H, W], only when ``projection`` ({'steps', 'rate', 'l1_weight'}) is
    given: (x − x*)² averaged over channels, x* the test-time projection of x
    (:func:`vae_qc.projection.project`).

  keys: one key or [B] keys. ``encoder_input`` [B, H, W, C]: what the encoder sees instead of x
  (x with cells hidden, :func:`inpaint_maps`); the maps are still those of x. ``with_kl``:
  also ``kl`` [B], KL(q(z|x) || p(z)), so that Σ_pixels nll + kl is −ELBO (K = S).
  ``antithetic``: the samples in pairs z̄ ± σ ε (:func:`estimators.noise`; config
  ``eval.map_antithetic``): the same expectations, with the noise that is odd in ε cancelled
  within each pair (for ``sq_error``, the cross term 2 (x − μ(z̄)) · J σ ε), so a pair is
  steadier than two, or four, independent samples where the residual is large. The −ELBO
  that Σ nll + kl gives is then the estimate with those samples.
  """
  posterior = fns.encode(x if encoder_input is None else encoder_input)
  batch, latent = posterior.mean.shape
  eps = estimators.noise(estimators.per_example_keys(keys, batch), jnp.arange(num_samples),
                         latent, posterior.mean.dtype, antithetic)
  z = posterior.mean + jnp.exp(posterior.log_scale) * eps  # [S, B, L]
  out = fns.decode(z)
  nll = -jnp.mean(jnp.sum(fns.likelihood.log_prob(out, x), axis=-1), axis=0)
  means = fns.likelihood.mean(out)  # [S, B, H, W, C]
  mean = jnp.mean(means, axis=0)
  sq = jnp.square(x - means)  # [S, B, H, W, C]
  z_sq = sq if out.log_scale is None else sq * jnp.exp(-2.0 * out.log_scale)
  maps = {'nll': nll, 'abs_error': jnp.mean(jnp.abs(x - mean), axis=-1),
          'sq_error': jnp.mean(sq, axis=(0, -1)), 'z_error': jnp.mean(z_sq, axis=(0, -1)),
          'reconstruction': mean}
  if with_kl:
    maps['kl'] = estimators.kl_standard_normal(posterior)
  if projection is not None:
    maps['projection'] = projection_lib.projection_map(fns, x, **projection)
  return maps


def inpaint_maps(fns: ModelFns, x: jax.Array, keys: jax.Array, num_samples: int, grid: int,
                 antithetic: bool = False) -> dict[str, jax.Array]:
  """:func:`pixel_maps` of x [B, H, W, C] for a model trained with ``config.model.inpaint =
  grid``: each of the four groups of cells is hidden from the encoder in turn, and each pixel
  takes its maps from the pass that hid it (vae_qc.inpaint). The same keys in every pass."""
  _, h, w, _ = x.shape
  groups = jnp.asarray(inpaint_lib.cell_groups(h, w, grid))
  passes = [pixel_maps(fns, x, keys, num_samples, encoder_input=inpaint_lib.hide(x, groups == g),
                       antithetic=antithetic)
            for g in range(inpaint_lib.GROUPS)]
  return inpaint_lib.combine(passes, groups)


# ------------------------------------------------------------------------------- compute
def compute(fns: ModelFns, x: jax.Array, keys: jax.Array, names: tuple[str, ...],
            eval_cfg) -> dict[str, jax.Array]:
  """Device parts of the scores ``names`` for one batch: {name: [B]} (trace inside jit).

  Scores needing the same estimate (estimator, K, chunk) share one computation of it.
  Outside a trace, non-finite x raises EstimatorError (inside, validate first)."""
  selected = get(names)
  estimators.check_finite(x)
  token = _BATCH_CACHE.set({})
  try:
    return {s.name: s.fn(fns, x, keys, eval_cfg) for s in selected if s.map_fn is None}
  finally:
    _BATCH_CACHE.reset(token)


def finish(names, images: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Applies the host parts of the scores (e.g. complexity corrections) on numpy arrays.

  images: float [B, H, W, C] in [0, 1], quantised as round(255 x) like the discretised
  likelihoods; values: {name: [B]} device parts. Returns {name: [B]}.
  """
  out = dict(values)
  selected = [s for s in get(names) if s.host_fn is not None]
  if selected:
    u8 = np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
    for s in selected:
      out[s.name] = np.asarray(s.host_fn(u8, np.asarray(values[s.name])), np.float64)
  return out


# ----------------------------------------------------------------------------- map scores
# Made by pixel_maps ('projection' only when config.eval.map asks for it: it costs
# eval.projection_steps gradient steps per image), and on the host 'cal_error' (sq_error, or
# abs_error with config.eval.map_residual, over the residual good images leave at such a
# reconstruction, vae_qc.calibration; only when the scorer holds a calibration).
BASE_MAPS = ('nll', 'abs_error', 'sq_error', 'z_error', 'projection', 'cal_error',
             'selfcal_error')
# ... of which these have a '_logratio' form
POSITIVE_MAPS = ('abs_error', 'sq_error', 'z_error', 'projection', 'cal_error', 'selfcal_error')
MAP_NAMES = (BASE_MAPS + tuple(f'{m}_{form}' for m in BASE_MAPS for form in ('smooth', 'excess'))
             + tuple(f'{m}_logratio' for m in POSITIVE_MAPS))


def check_sigma(sigma: float) -> None:
  """ConfigError unless the smoothing σ (config.eval.map_sigma, px) is > 0."""
  if not sigma > 0:
    raise ConfigError(f'config.eval.map_sigma (Gaussian smoothing of the anomaly map, in pixels) '
                      f'must be > 0, got {sigma}; use the *_raw map scores and the unsmoothed '
                      "map ('nll') for no smoothing.")


def smooth_map(amap: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian smoothing of a per-pixel map [H, W] with σ = ``sigma`` pixels.

  As anomalib's post-processing of PaDiM / PatchCore maps: the kernel is truncated at 4σ and
  the map is mirrored at its borders (``scipy.ndimage.gaussian_filter``, mode 'reflect').
  Returns float32 [H, W]. σ ≤ 0: ConfigError.
  """
  check_sigma(sigma)
  return scipy.ndimage.gaussian_filter(np.asarray(amap, np.float64), sigma, mode='reflect',
                                       truncate=4.0).astype(np.float32)


def excess(amap: np.ndarray) -> np.ndarray:
  """A map [H, W] minus its own median: how far each pixel is above the image's typical
  pixel. The level of a residual map follows the surface's brightness and contrast; its
  excess is comparable across images."""
  amap = np.asarray(amap)
  return (amap - np.median(amap)).astype(amap.dtype)


# Default weight of the too-likely side of the '*_logratio' maps (config.eval.map_low_weight).
MAP_LOW_WEIGHT = 0.5


def check_low_weight(weight: float) -> None:
  """ConfigError unless 0 ≤ config.eval.map_low_weight ≤ 1."""
  if not 0 <= weight <= 1:
    raise ConfigError(f'config.eval.map_low_weight (weight of the too-likely side of the '
                      f"'*_logratio' maps) must be in [0, 1], got {weight}; 0 flags only "
                      'regions less likely than the image\'s typical pixel, 1 both sides alike.')


def check_post_sigma(post_sigma: float) -> None:
  """ConfigError unless config.eval.map_post_sigma (px) is ≥ 0 (0: off)."""
  if not post_sigma >= 0:
    raise ConfigError(f'config.eval.map_post_sigma (Gaussian smoothing of the log-ratio map after '
                      f'its two sides are taken, in pixels; 0: none) must be >= 0, got '
                      f'{post_sigma}.')


def log_ratio(amap: np.ndarray, low_weight: float) -> np.ndarray:
  """Two-sided log-ratio map of a positive map [H, W] (a smoothed ``sq_error``).

  t = log(m / median(m)) says how many times (in e-folds) a pixel's residual exceeds the
  image's typical pixel's; the map is max(t, −w·t), w = ``low_weight``. The ratio does not
  change when the surface's contrast scales the whole residual. With w > 0 a region *more*
  likely than typical (a smooth smudge on a texture the model cannot fully reconstruct) also
  scores: a local typicality test (Nalisnick et al., 2019), with the too-likely side weighted
  by w. Returns float32 [H, W], ≥ 0 where w > 0.
  """
  amap = np.asarray(amap, np.float64)
  med = float(np.median(amap))
  eps = 1e-6 * med + np.finfo(np.float32).tiny  # a residual of exactly 0 stays finite
  t = np.log((np.maximum(amap, 0.0) + eps) / (med + eps))
  return level_lib.two_sided(t, low_weight).astype(np.float32)


def base_map_of(map_name: str) -> str:
  """The unsmoothed map behind a map name: 'sq_error_logratio' -> 'sq_error'."""
  for suffix in ('_smooth', '_excess', '_logratio'):
    map_name = map_name.removesuffix(suffix)
  return map_name


def base_map(eval_cfg) -> str:
  """The unsmoothed map that map scores summarise: config.eval.map without its suffix."""
  return base_map_of(getattr(eval_cfg, 'map', 'nll'))


def top_k_mean(values: np.ndarray, k: int) -> float:
  """The mean of the k largest values of an array (all of them when it has fewer)."""
  flat = np.asarray(values, np.float64).reshape(-1)
  k = min(int(k), flat.size)
  return float(np.mean(np.partition(flat, flat.size - k)[flat.size - k:]))


def register_map_score(name: str, reduce: str, smooth: bool, *, form: str = '',
                       replace: bool = False) -> Score:
  """Registers a score that summarises the image's map (``base_map``, nats per pixel for nll).

  reduce: 'max' (the largest pixel), 'max_excess' (the largest pixel minus the map's median,
  :func:`excess`) or 'topk' (the mean of the ``eval_cfg.map_topk`` largest); smooth:
  Gaussian-smooth the map first (σ = ``eval_cfg.map_sigma`` px, :func:`smooth_map`); form:
  '' (the map itself) or 'logratio' (:func:`log_ratio` of the smoothed map, which needs a
  positive base map: ``config.eval.map`` = 'sq_error_logratio', 'z_error_logratio' or
  'abs_error_logratio').
  """
  def map_fn(amap, eval_cfg):
    if reduce == 'max_excess':
      return float(np.max(amap) - np.median(amap))
    return float(np.max(amap)) if reduce == 'max' else top_k_mean(amap, eval_cfg.map_topk)

  if name in SCORES and not replace:
    raise ValueError(f'score {name!r} is already registered (pass replace=True).')
  if form not in ('', 'logratio') or (form and not smooth):
    raise ValueError(f"form must be '' or 'logratio' (of a smoothed map), got {form!r}.")
  what = {'max': 'the largest pixel', 'max_excess': 'the largest pixel minus the median',
          'topk': 'the mean of the map_topk largest pixels'}[reduce]
  of = ('the two-sided log ratio (log_ratio, w = eval.map_low_weight; smoothed again by σ = '
        'eval.map_post_sigma where > 0) of the Gaussian-smoothed (σ = eval.map_sigma) '
        if form else
        'the Gaussian-smoothed (σ = eval.map_sigma) ' if smooth else 'the ')
  SCORES[name] = Score(
      name, None, doc=f'{what} of {of}per-pixel map (eval.map; nll = −E_q log p(x_ij|z), nats).',
      map_fn=map_fn, map_smooth=smooth, map_form=form)
  return SCORES[name]


register_map_score('map_max', 'max', smooth=True)
register_map_score('map_max_excess', 'max_excess', smooth=True)
register_map_score('map_topk', 'topk', smooth=True)
register_map_score('map_max_raw', 'max', smooth=False)
register_map_score('map_topk_raw', 'topk', smooth=False)
register_map_score('map_max_logratio', 'max', smooth=True, form='logratio')
register_map_score('map_topk_logratio', 'topk', smooth=True, form='logratio')


def map_score_names(names) -> tuple[str, ...]:
  """The map scores among ``names``."""
  return tuple(s.name for s in get(names) if s.map_fn is not None)


def check_map_scores(names, map_name: str) -> None:
  """ConfigError if a '*_logratio' map score is asked of a map that is not positive."""
  base = base_map_of(map_name)
  wrong = [s.name for s in get(names) if s.map_form == 'logratio' and base not in POSITIVE_MAPS]
  if wrong:
    raise ConfigError(f'score(s) {", ".join(wrong)} take the log ratio of a positive map, but '
                      f'config.eval.map is {map_name!r}; set config.eval.map to '
                      "'sq_error_logratio' (or 'cal_error_logratio', 'z_error_logratio', "
                      "'abs_error_logratio').")


def _map_key(base: str, score: Score) -> str:
  return base + ('_' + score.map_form if score.map_form else
                 '_smooth' if score.map_smooth else '')


def map_values(names, maps: Mapping[str, Any], eval_cfg) -> dict[str, np.ndarray]:
  """{name: [N]} of the map scores ``names`` from ``maps[base_map(eval_cfg)]`` ([N] maps), or
  from its smoothed or log-ratio form (a :class:`MapForms`, which derives it when read)."""
  base = base_map(eval_cfg)
  return {s.name: np.array([s.map_fn(np.asarray(m), eval_cfg) for m in maps[_map_key(base, s)]],
                           np.float64)
          for s in get(names) if s.map_fn is not None}


class MapForms(collections.abc.Mapping):
  """Per-pixel maps with their derived forms, each derived when first read.

  Keys: those of the base maps given, then for each of :data:`BASE_MAPS` present
  '<map>_smooth' (σ = ``sigma`` px), '<map>_excess' (smoothed, minus its median:
  :func:`excess`) and, for :data:`POSITIVE_MAPS`, '<map>_logratio' (:func:`log_ratio` of the
  smoothed map, w = ``low_weight``; then smoothed again by σ = ``post_sigma`` px where that
  is > 0). Values have the form of the base map: [N, H, W] when it
  is an array, else a list of [H_i, W_i]. Reading one form smooths only its own base map
  (once); the rest are never computed unless read, so scoring with one configured map costs
  one smoothing per image, not one per base map and form.
  """

  def __init__(self, maps: Mapping[str, Any], sigma: float, low_weight: float = MAP_LOW_WEIGHT,
               post_sigma: float = 0.0):
    check_sigma(sigma)
    check_low_weight(low_weight)
    check_post_sigma(post_sigma)
    self._maps, self._sigma, self._low_weight = dict(maps), sigma, low_weight
    self._post_sigma = post_sigma
    self._derived: dict[str, Any] = {}
    self._names = list(self._maps) + [
        f'{b}_{form}' for b in BASE_MAPS if b in self._maps
        for form in ('smooth', 'excess') + (('logratio',) if b in POSITIVE_MAPS else ())]

  def __getitem__(self, name: str):
    if name in self._maps:
      return self._maps[name]
    if name not in self._derived:
      if name not in self._names:
        raise KeyError(name)
      base = base_map_of(name)
      raw = self._maps[base]
      stack = np.stack if isinstance(raw, np.ndarray) else list
      smooth_key = f'{base}_smooth'
      if smooth_key not in self._derived:
        self._derived[smooth_key] = stack([smooth_map(m, self._sigma) for m in raw])
      smoothed = self._derived[smooth_key]
      if name.endswith('_excess'):
        self._derived[name] = stack([excess(m) for m in smoothed])
      elif name.endswith('_logratio'):
        ratio = (log_ratio(m, self._low_weight) for m in smoothed)
        if self._post_sigma:
          ratio = (smooth_map(r, self._post_sigma) for r in ratio)
        self._derived[name] = stack(list(ratio))
    return self._derived[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)


def add_smoothed_maps(maps: Mapping[str, Any], sigma: float,
                      low_weight: float = MAP_LOW_WEIGHT, post_sigma: float = 0.0) -> MapForms:
  """``maps`` with their '_smooth', '_excess' and '_logratio' forms (:class:`MapForms`),
  derived lazily: only the forms that are read are computed."""
  return MapForms(maps, sigma, low_weight, post_sigma)
