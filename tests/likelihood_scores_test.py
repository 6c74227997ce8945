"""Likelihood regret, the latent-space density and the background ratio against references:
the linear-Gaussian model's exact posterior (float64), scipy's densities, sklearn's mixture."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tests.estimators_test import LinearGaussian
from vae_qc import aux
from vae_qc import latent_density
from vae_qc import models
from vae_qc import refit
from vae_qc import scores


@pytest.fixture(scope='module', autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


MODEL = LinearGaussian(seed=3)


def _gap(model, encode, x):
  """log p(x) − ELBO(x; q) = KL(q || p(z|x)), exact for the linear-Gaussian model: [B]."""
  q = encode(jnp.asarray(x))
  mq, sq = np.asarray(q.mean), np.exp(np.asarray(q.log_scale))
  mp, sp = np.asarray(model.posterior_mean(jnp.asarray(x))), model.post_sd
  return np.sum(np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5, axis=-1)


@pytest.fixture(scope='module')
def regrets():
  """Regret of 12 images under the exact and a wrong encoder, ELBO and IWAE bounds."""
  x = jnp.asarray(MODEL.sample(12, seed=4))
  keys = jax.random.split(jax.random.key(1), 12)

  @jax.jit
  def run(x, keys):
    out = {}
    for name, enc in (('exact', MODEL.encode_exact), ('bad', MODEL.encode_bad)):
      for bound, k in (('elbo', 4000), ('log_px', 64)):
        out[name, bound] = refit.likelihood_regret(
            enc, MODEL.log_likelihood, x, keys, bound=bound, bound_samples=k, chunk_size=500,
            steps=300, learning_rate=0.05, refit_samples=8)
    return out
  return np.asarray(x), jax.device_get(run(x, keys))


def test_regret_is_zero_when_the_encoder_is_exact(regrets):
  _, r = regrets
  # The exact posterior's ELBO is log p(x) for every sample: no refit can beat it. The refit
  # wanders a little around it (its own noise), so the regret is ~0 and never clearly > 0.
  np.testing.assert_allclose(r['exact', 'elbo'], 0.0, atol=0.02)
  np.testing.assert_allclose(r['exact', 'log_px'], 0.0, atol=0.02)


def test_regret_recovers_the_amortisation_gap(regrets):
  x, r = regrets
  gap = _gap(MODEL, MODEL.encode_bad, x)  # what the bad encoder loses, exactly
  assert np.all(gap > 1.0)
  # The refit finds the exact posterior: the regret in the ELBO is the whole gap, up to the
  # Monte-Carlo error of the K = 4000 ELBO of the bad q.
  err = np.abs(r['bad', 'elbo'] - gap)
  assert np.all(err <= 0.1 + 0.05 * gap), (r['bad', 'elbo'], gap)
  # The IWAE bound closes most of the gap by itself: its regret is > 0 on average (single
  # values are noisy: log p̂ under the bad q has a large variance at K = 64) and smaller.
  assert 0.0 < np.mean(r['bad', 'log_px']) < 0.5 * np.mean(r['bad', 'elbo'])


def test_refit_converges_to_the_exact_posterior():
  x = jnp.asarray(MODEL.sample(4, seed=6))
  q = jax.jit(lambda x: refit.refit_posterior(
      MODEL.log_likelihood, x, MODEL.encode_bad(x), jax.random.key(2), steps=300,
      learning_rate=0.05, num_samples=8))(x)
  np.testing.assert_allclose(q.mean, MODEL.posterior_mean(x), atol=0.05)
  np.testing.assert_allclose(np.exp(q.log_scale), np.broadcast_to(MODEL.post_sd, q.mean.shape),
                             rtol=0.1)


def test_refit_of_an_image_does_not_depend_on_its_batch():
  x = jnp.asarray(MODEL.sample(6, seed=7))
  keys = jax.random.split(jax.random.key(3), 6)
  fn = jax.jit(lambda x, k: refit.refit_posterior(MODEL.log_likelihood, x, MODEL.encode_bad(x),
                                                   k, steps=20, learning_rate=0.05).mean)
  whole = fn(x, keys)
  part = fn(x[3:], keys[3:])
  np.testing.assert_allclose(whole[3:], part, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------- latent density
def test_mixture_density_matches_scipy_and_sklearn():
  from sklearn import mixture  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  codes = np.concatenate([rng.normal(-2, 0.5, (300, 3)), rng.normal(2, [1.0, 0.3, 2.0],
                                                                     (300, 3))])
  gmm = latent_density.fit(codes, 2, seed=0)
  z = rng.normal(0, 2, (50, 3))
  got = np.asarray(latent_density.log_density(jax.tree.map(np.float64, gmm), jnp.asarray(z)))
  # Reference 1: scipy's densities with the mixture's own parameters.
  ref = np.zeros(len(z))
  for w, m, p in zip(np.exp(gmm['log_weights']), gmm['means'], gmm['precisions_cholesky']):
    p = p.astype(np.float64)
    cov = np.linalg.inv(p @ p.T)
    ref += w * stats.multivariate_normal(m, cov).pdf(z)
  np.testing.assert_allclose(got, np.log(ref), rtol=1e-4, atol=1e-4)
  # Reference 2: sklearn's own score of the same fit.
  sk = mixture.GaussianMixture(2, covariance_type='full', reg_covar=1e-6, random_state=0,
                               max_iter=200).fit(codes)
  np.testing.assert_allclose(got, sk.score_samples(z), rtol=1e-4, atol=1e-3)


def test_one_component_is_the_mahalanobis_distance():
  rng = np.random.default_rng(1)
  codes = rng.multivariate_normal([1.0, -1.0], [[2.0, 0.6], [0.6, 0.5]], 2000)
  gmm = jax.tree.map(np.float64, latent_density.fit(codes, 1))
  z = rng.normal(size=(20, 2))
  mean, cov = codes.mean(0), np.cov(codes.T, bias=True)
  d = z - mean
  maha = np.einsum('bi,ij,bj->b', d, np.linalg.inv(cov), d)
  expected = -0.5 * maha - 0.5 * np.log(np.linalg.det(2 * math.pi * cov))
  np.testing.assert_allclose(latent_density.log_density(gmm, jnp.asarray(z)), expected,
                             rtol=1e-4)


def test_latent_nll_score_reads_the_mixture_of_the_model():
  x = jnp.asarray(MODEL.sample(8, seed=8))
  codes = np.asarray(MODEL.posterior_mean(jnp.asarray(MODEL.sample(500, seed=9))))
  gmm = jax.tree.map(np.float64, latent_density.fit(codes, 3))
  fns = models.ModelFns(MODEL.encode_exact, MODEL.decode, MODEL.likelihood,
                        {'latent_gmm': gmm})
  got = scores.SCORES['latent_nll'].fn(fns, x, jax.random.key(0), None)
  np.testing.assert_allclose(got, -latent_density.log_density(gmm, MODEL.posterior_mean(x)))
  bare = models.ModelFns(MODEL.encode_exact, MODEL.decode, MODEL.likelihood)
  with pytest.raises(Exception, match='re-run the study with the score listed'):
    scores.SCORES['latent_nll'].fn(bare, x, jax.random.key(0), None)


# ---------------------------------------------------------------------- background ratio
def _batch(n, seed, key_seed, encode):
  """n images of MODEL, one key each, and MODEL's ModelFns with ``encode``."""
  return (jnp.asarray(MODEL.sample(n, seed=seed)), jax.random.split(jax.random.key(key_seed), n),
          models.ModelFns(encode, MODEL.decode, MODEL.likelihood))


class _Eval:
  elbo_samples = 16
  log_px_samples = 16
  chunk_size = 8


def test_background_ratio_is_zero_for_the_same_model_and_exact_otherwise():
  x, keys, same = _batch(8, 10, 4, MODEL.encode_exact)
  fns = same._replace(aux={'background': same})
  for name in ('background_ratio', 'background_ratio_elbo'):
    np.testing.assert_allclose(scores.SCORES[name].fn(fns, x, keys, _Eval()), 0.0, atol=1e-9)
  # Another linear-Gaussian model as the background: with exact posteriors both estimates
  # are exact, so the ratio is the difference of the exact log-densities.
  other = LinearGaussian(seed=11)
  bg = models.ModelFns(other.encode_exact, other.decode, other.likelihood)
  got = scores.SCORES['background_ratio'].fn(fns._replace(aux={'background': bg}), x, keys,
                                             _Eval())
  # x are drawn from MODEL: ratio = log p_other(x) − log p_model(x).
  np.testing.assert_allclose(got, other.exact_log_px(x) - MODEL.exact_log_px(x), atol=1e-6)


def test_noise_replaces_the_asked_share_of_pixels_reproducibly():
  batch = np.zeros((64, 16, 16, 1), np.float32)
  a = aux.noisy(batch, 0.2, seed=0, step=3)
  assert abs(np.mean(a != 0) - 0.2) < 0.02
  np.testing.assert_array_equal(a, aux.noisy(batch, 0.2, seed=0, step=3))
  assert not np.array_equal(a, aux.noisy(batch, 0.2, seed=0, step=4))
  assert a.min() >= 0.0 and a.max() <= 1.0


class _RegretEval(_Eval):
  regret_steps = 10
  regret_lr = 0.05
  regret_samples = 2


def test_regret_scores_equal_the_pure_function():
  """The scores share the refit and the amortised bound within a batch: same values."""
  x, keys, fns = _batch(6, 12, 5, MODEL.encode_bad)
  cfg = _RegretEval()
  got = jax.jit(lambda x, k: scores.compute(fns, x, k, ('likelihood_regret', 'neg_elbo',
                                                         'likelihood_regret_iw'), cfg))(x, keys)
  for name, bound in (('likelihood_regret', 'elbo'), ('likelihood_regret_iw', 'log_px')):
    expected = jax.jit(lambda x, k, b=bound: refit.likelihood_regret(
        fns.encode, fns.log_likelihood, x, k, bound=b, bound_samples=16, chunk_size=8,
        steps=10, learning_rate=0.05, refit_samples=2))(x, keys)
    np.testing.assert_allclose(got[name], expected, rtol=1e-9, atol=1e-9, err_msg=name)
