"""Estimators against a linear-Gaussian model with an exact log p(x), in float64.

Model: z ~ N(0, I_L), x | z ~ N(W z + b, σ² I_D), so p(x) = N(b, W Wᵀ + σ² I) and the
posterior is N(μ(x), Σ) with Σ = (I + WᵀW/σ²)⁻¹, μ(x) = Σ Wᵀ(x − b)/σ². W has orthogonal
columns, so Σ is diagonal and the exact posterior is a valid diagonal q.

Compiles are the cost of this file: each (encode_fn, K, chunk, batch shape) compiles once, and
the tests share them where they can (module-level model functions, the same K and B).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vae_qc import estimators
from vae_qc import likelihoods
from vae_qc import models
from vae_qc import scores
from vae_qc.errors import EstimatorError
from vae_qc.models import Posterior

H, W_, C = 4, 4, 1
D, L, SIGMA = H * W_ * C, 2, 0.5


@pytest.fixture(scope='module', autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


class LinearGaussian:
  """p(z) = N(0, I), p(x|z) = N(W z + b, σ² I); images [B, 4, 4, 1]."""

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, L)))
    self.w = q * np.array([1.5, 0.8])  # orthogonal columns: WᵀW = diag(2.25, 0.64)
    self.b = 0.3 * rng.normal(size=D)
    self.cov = self.w @ self.w.T + SIGMA ** 2 * np.eye(D)
    self.post_sd = 1.0 / np.sqrt(1.0 + np.sum(self.w ** 2, 0) / SIGMA ** 2)  # [L]
    self.likelihood = likelihoods.get('gaussian_fixed', SIGMA)

  def sample(self, n, seed):
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(self.b, self.cov, size=n).reshape(n, H, W_, C)

  def exact_log_px(self, x):
    return stats.multivariate_normal(self.b, self.cov).logpdf(np.reshape(x, (len(x), -1)))

  def posterior_mean(self, x):
    return (jnp.reshape(x, (x.shape[0], -1)) - self.b) @ self.w / SIGMA ** 2 * self.post_sd ** 2

  def encode_exact(self, x):
    mean = self.posterior_mean(x)
    return Posterior(mean, jnp.broadcast_to(jnp.log(self.post_sd), mean.shape))

  def encode_imperfect(self, x):
    """Mean off by one posterior sd, scale 1.2× too wide: ELBO ≈ 1 nat below log p(x)."""
    mean = self.posterior_mean(x) + self.post_sd
    return Posterior(mean, jnp.broadcast_to(jnp.log(1.2 * self.post_sd), mean.shape))

  def encode_bad(self, x):
    """Mean off by two posterior sds: a large IWAE gap, so the K-ordering shows."""
    mean = self.posterior_mean(x) + 2.0 * self.post_sd
    return Posterior(mean, jnp.broadcast_to(jnp.log(1.2 * self.post_sd), mean.shape))

  def decode(self, z):
    loc = (z @ self.w.T + self.b).reshape(z.shape[:-1] + (H, W_, C))
    return likelihoods.DecoderOutput(loc, jnp.asarray(math.log(SIGMA)))

  def log_likelihood(self, x, z):
    """log p(x|z): x [B, 4, 4, 1], z [S, B, L] -> [S, B]."""
    return jnp.sum(self.likelihood.log_prob(self.decode(z), x), axis=(-3, -2, -1))


MODEL = LinearGaussian()
X_BIG = MODEL.sample(256, seed=1)  # the batch shared by the K-ordering, chunking and key tests
KEY = jax.random.key(0)
KEYS = jax.random.split(jax.random.key(5), len(X_BIG))  # one key per example of X_BIG


@pytest.fixture(scope='module')
def big_batch_estimates():
  """log p̂ (K = 10, 100, 1000) and the ELBO of X_BIG under the bad q."""
  enc, ll = MODEL.encode_bad, MODEL.log_likelihood
  return {
      'elbo': estimators.elbo(enc, ll, X_BIG, KEYS, 100),
      **{k: estimators.log_px(enc, ll, X_BIG, KEYS, k, chunk) for k, chunk in
         ((10, None), (100, None), (1000, 250))},
  }


def test_log_px_matches_exact_and_elbo_is_below():
  x = MODEL.sample(16, seed=2)
  exact = MODEL.exact_log_px(x)
  out = estimators.estimate(['log_px', 'elbo'], MODEL.encode_imperfect, MODEL.log_likelihood,
                            x, KEY, 5000, 1000)
  np.testing.assert_array_less(np.abs(out['log_px'] - exact), 0.01 * D)
  np.testing.assert_array_less(out['elbo'], exact)
  assert np.mean(exact - out['elbo']) > 0.5  # q is imperfect: a real gap to close


def test_elbo_below_iwae_rising_with_k(big_batch_estimates):
  exact = MODEL.exact_log_px(X_BIG)
  gaps = [float(np.mean(big_batch_estimates[k] - exact)) for k in ('elbo', 10, 100, 1000)]
  assert gaps[0] < gaps[1] < gaps[2] < gaps[3], gaps
  assert gaps[3] < 0.05  # and close to exact from below (in expectation)


def test_chunked_equals_unchunked(big_batch_estimates):
  names = ['log_px', 'elbo', 'ess', 'elbo_stderr', 'log_px_stderr']
  # 30 does not divide 100: the last chunk is padded and masked.
  chunked = estimators.estimate(names, MODEL.encode_bad, MODEL.log_likelihood, X_BIG, KEYS,
                                100, 30)
  whole = estimators.estimate(names, MODEL.encode_bad, MODEL.log_likelihood, X_BIG, KEYS, 100)
  for n in names:
    np.testing.assert_allclose(chunked[n], whole[n], rtol=1e-5, atol=1e-5, err_msg=n)
  np.testing.assert_allclose(whole['log_px'], big_batch_estimates[100], rtol=1e-12)
  assert np.all((whole['ess'] >= 1.0 - 1e-9) & (whole['ess'] <= 100 + 1e-9))


def test_exact_posterior_gives_equal_weights():
  x = MODEL.sample(8, seed=3)
  k = 64
  out = estimators.estimate(['log_px', 'ess', 'log_px_stderr'], MODEL.encode_exact,
                            MODEL.log_likelihood, x, KEY, k, 16)
  np.testing.assert_allclose(out['log_px'], MODEL.exact_log_px(x), atol=1e-9)
  np.testing.assert_allclose(out['ess'], k, rtol=1e-9)
  np.testing.assert_allclose(out['log_px_stderr'], 0.0, atol=1e-6)


def test_an_example_does_not_depend_on_its_batch(big_batch_estimates):
  keys = KEYS
  enc, ll = MODEL.encode_bad, MODEL.log_likelihood
  full = big_batch_estimates[100]
  perm = np.random.default_rng(0).permutation(len(X_BIG))
  permuted = estimators.log_px(enc, ll, X_BIG[perm], keys[perm], 100)
  np.testing.assert_allclose(permuted, full[perm], rtol=1e-12)
  # Same first 4 examples in another batch (others replaced): the same 4 estimates.
  other = np.concatenate([X_BIG[:4], MODEL.sample(len(X_BIG) - 4, seed=9)])
  mixed = estimators.log_px(enc, ll, other, keys, 100)
  np.testing.assert_allclose(mixed[:4], full[:4], rtol=1e-12)
  # Raw uint32 keys [B, 2] are the same keys as the typed ones.
  raw = estimators.per_example_keys(jax.random.key_data(keys), len(X_BIG))
  np.testing.assert_array_equal(jax.random.key_data(raw), jax.random.key_data(keys))


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_samples=0), 'num_samples'),
    (dict(num_samples=-3), 'num_samples'),
    (dict(num_samples=2.5), 'num_samples'),
    (dict(num_samples=True), 'num_samples'),
    (dict(chunk_size=0), 'chunk_size'),
    (dict(chunk_size=-1), 'chunk_size'),
    (dict(key=jax.random.split(jax.random.key(0), 3)), 'one key per example'),
])
def test_bad_arguments_raise(kwargs, match):
  args = dict(x=X_BIG[:4], key=KEY, num_samples=8, chunk_size=4)
  args.update(kwargs)
  with pytest.raises(EstimatorError, match=match):
    estimators.log_px(MODEL.encode_exact, MODEL.log_likelihood, args['x'], args['key'],
                      args['num_samples'], args['chunk_size'])


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad):
  x = np.array(X_BIG[:4])
  x[2, 1, 1, 0] = bad
  for name in ('elbo', 'log_px'):
    with pytest.raises(EstimatorError, match=r'non-finite.*examples \[2\]'):
      estimators.get(name)(MODEL.encode_exact, MODEL.log_likelihood, x, KEY, 8, 4)


def test_wrong_model_shapes_raise():
  with pytest.raises(EstimatorError, match=r'must return \[S, B\]'):
    estimators.log_px(MODEL.encode_exact, lambda x, z: jnp.sum(z, -1)[..., None], X_BIG[:4],
                      KEY, 8)
  with pytest.raises(EstimatorError, match='Posterior'):
    estimators.log_px(lambda x: Posterior(jnp.zeros((3, L)), jnp.zeros((3, L))),
                      MODEL.log_likelihood, X_BIG[:4], KEY, 8)


def _nan_encoder(x):
  mean, log_scale = MODEL.encode_exact(x)
  return Posterior(mean, log_scale.at[1].set(jnp.nan))


def test_a_model_producing_nan_raises_instead_of_scoring():
  with pytest.raises(EstimatorError, match=r'NaN for examples \[1\]'):
    estimators.log_px(_nan_encoder, MODEL.log_likelihood, X_BIG[:4], KEY, 8, 4)


@pytest.fixture
def vr_registered():
  """The module docstring's worked example: the VR bound with α = ½, and the sample mean of
  log w (which shares nothing with the built-in statistics), both streaming."""
  @estimators.register('test_vr_half', logsumexps={'lse_w_half': lambda d: 0.5 * d.log_w})
  def vr_half(stats):
    """L_½ = 2 log (1/K) Σ_k √w_k."""
    return 2.0 * (stats.extra['lse_w_half'] - math.log(stats.num_samples))

  @estimators.register('test_mean_log_w', sums={'sum_log_w': lambda d: d.log_w})
  def mean_log_w(stats):
    """(1/K) Σ_k log w_k."""
    return stats.extra['sum_log_w'] / stats.num_samples

  scores.register_estimator_score('neg_test_vr_half', 'test_vr_half', 'log_px_samples')
  yield
  for name in ('test_vr_half', 'test_mean_log_w'):
    estimators.unregister(name)
  scores.unregister('neg_test_vr_half')


def test_registered_estimator_is_found_and_used_by_a_score(vr_registered):
  del vr_registered
  x = X_BIG[:8]
  with pytest.raises(ValueError, match='already registered'):
    estimators.register('test_vr_half')(lambda s: s.kl)
  out = estimators.estimate(['test_vr_half', 'test_mean_log_w', 'log_px'], MODEL.encode_bad,
                            MODEL.log_likelihood, x, KEY, 50, 20)
  # Power means of the same weights: geometric ≤ order ½ ≤ arithmetic, per example.
  assert np.all(out['test_mean_log_w'] <= out['test_vr_half'] + 1e-9)
  assert np.all(out['test_vr_half'] <= out['log_px'] + 1e-9)
  assert np.all(out['test_mean_log_w'] < out['log_px'] - 1e-3)
  fns = models.ModelFns(MODEL.encode_bad, MODEL.decode, MODEL.likelihood)
  by_name = estimators.get('test_vr_half')(fns.encode, fns.log_likelihood, x, KEY, 50, 20)
  np.testing.assert_allclose(by_name, out['test_vr_half'], rtol=1e-12)

  cfg = type('Eval', (), dict(log_px_samples=50, chunk_size=20))()
  got = scores.compute(fns, x, KEY, ('neg_test_vr_half',), cfg)
  np.testing.assert_allclose(got['neg_test_vr_half'], -out['test_vr_half'], rtol=1e-12)
  assert 'neg_test_vr_half' in scores.SCORES


def test_unknown_estimator_lists_the_registered_ones():
  with pytest.raises(EstimatorError, match='registered: elbo, iwae, log_px'):
    estimators.get('nope')
  with pytest.raises(EstimatorError, match='diagnostics'):
    estimators.estimate(['nope'], MODEL.encode_exact, MODEL.log_likelihood, X_BIG[:2], KEY, 2)


def test_compiles_once_for_repeated_calls():
  traces = {'encode': 0, 'log_lik': 0}

  def encode(x):
    traces['encode'] += 1
    return MODEL.encode_imperfect(x)

  def log_lik(x, z):
    traces['log_lik'] += 1
    return MODEL.log_likelihood(x, z)

  xs = [MODEL.sample(6, seed=s) for s in range(3)]
  first = estimators.log_px(encode, log_lik, xs[0], KEY, 12, 5)
  after_first = dict(traces)
  assert after_first == {'encode': 1, 'log_lik': 1}  # the scan body is traced once
  for i, x in enumerate(xs):
    estimators.log_px(encode, log_lik, x, jax.random.key(i), 12, 5)
    estimators.elbo(encode, log_lik, x, jax.random.key(i), 12, 5)  # same statistics, same jit
  assert traces == after_first
  # Inside the caller's jit the estimator is inlined (no nested cache) and agrees.
  jitted = jax.jit(lambda x, k: estimators.log_px(encode, log_lik, x, k, 12, 5))
  np.testing.assert_allclose(jitted(xs[0], KEY), first, rtol=1e-12)
  jitted(xs[1], KEY)
  assert traces == {'encode': 2, 'log_lik': 2}


def test_stderr_formulas_on_known_weights():
  """ESS and the delta-method stderr from hand-made statistics: two weights, 1 and 3."""
  stats = estimators.SampleStats(
      num_samples=2, kl=jnp.zeros(1), mean_log_lik=jnp.array([1.0]),
      var_log_lik=jnp.array([4.0]), lse_log_w=jnp.log(jnp.array([4.0])),
      lse_2log_w=jnp.log(jnp.array([10.0])), extra={})
  np.testing.assert_allclose(estimators.effective_sample_size(stats), 16.0 / 10.0)
  # Var(w)/(K w̄²) with the plug-in variance: ((1 − 2)² + (3 − 2)²)/2 / (2 · 4) = 1/8.
  np.testing.assert_allclose(estimators.log_px_stderr(stats), math.sqrt(1.0 / 8.0))
  # Sample sd √(2 · 4 / 1) over √2.
  np.testing.assert_allclose(estimators.elbo_stderr(stats), 2.0)
  np.testing.assert_allclose(estimators.log_px.reduce(stats), math.log(2.0))


def test_antithetic_noise_comes_in_pairs_of_the_plain_draws():
  """Sample k is (−1)^k times the plain draw k // 2 of the same key, whatever the indices a
  chunk asks for: N(0, I) each, the same sample of an example in any chunk."""
  keys = KEYS[:3]
  plain = np.asarray(estimators.noise(keys, jnp.arange(3), L))
  anti = np.asarray(estimators.noise(keys, jnp.arange(6), L, antithetic=True))
  np.testing.assert_array_equal(anti[0::2], plain)
  np.testing.assert_array_equal(anti[1::2], -plain)
  np.testing.assert_array_equal(
      np.asarray(estimators.noise(keys, jnp.arange(3, 6), L, antithetic=True)), anti[3:])


def test_antithetic_map_of_the_linear_gaussian_model():
  """sq_error with an antithetic pair z̄ ± sε under a linear decoder W z + b is exactly
  (x − W z̄ − b)² + (W (s ε))² (the cross term cancels; float64), and over many keys its mean
  is the closed form E_q (x − W z − b)² = (x − W z̄ − b)² + Σ_l W_dl² s_l², as that of
  independent samples, with a smaller spread than theirs."""
  fns = models.ModelFns(MODEL.encode_imperfect, MODEL.decode, MODEL.likelihood)
  x = jnp.asarray(MODEL.sample(4, seed=3))
  post = MODEL.encode_imperfect(x)
  mean, sd = np.asarray(post.mean), np.exp(np.asarray(post.log_scale))  # [4, L]
  residual = np.asarray(x).reshape(4, D) - (mean @ MODEL.w.T + MODEL.b)  # at z̄, [4, D]
  keys = jax.random.split(jax.random.key(11), 4)
  got = np.asarray(scores.pixel_maps(fns, x, keys, 2, antithetic=True)['sq_error'])
  eps = np.asarray(estimators.noise(estimators.per_example_keys(keys, 4), jnp.arange(1), L,
                                    mean.dtype))[0]  # the pair's first draw
  want = residual ** 2 + ((sd * eps) @ MODEL.w.T) ** 2
  np.testing.assert_allclose(got.reshape(4, D), want, rtol=1e-10)

  exact = residual ** 2 + (sd ** 2) @ (MODEL.w.T ** 2)  # [4, D]
  maps = jax.jit(lambda k, anti: scores.pixel_maps(fns, x, k, 2, antithetic=anti)['sq_error'],
                 static_argnums=1)
  draws = {anti: np.stack([np.asarray(maps(jax.random.split(jax.random.key(100 + i), 4), anti))
                           for i in range(400)]).reshape(400, 4, D) for anti in (False, True)}
  for anti, d in draws.items():
    stderr = d.std(0) / math.sqrt(len(d))
    assert np.all(np.abs(d.mean(0) - exact) < 5 * stderr + 1e-12), anti
  assert draws[True].var(0).mean() < 0.5 * draws[False].var(0).mean()
