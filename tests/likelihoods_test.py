"""Likelihoods against scipy.stats in float64; normalisation and gradients of the discretised
ones (float32 and float64), including the edge bins and extreme scales."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats

from vae_qc import likelihoods
from vae_qc.errors import ConfigError
from vae_qc.likelihoods import DecoderOutput

DISCRETIZED = {'discretized_logistic': stats.logistic, 'discretized_gaussian': stats.norm}
SCALES = np.logspace(-4, 5, 10)  # 1e-4 … 1e5: bins wide, comparable and far narrower than s
LOCS = (0.0, 0.3, 1.0, -0.2, 1.5)  # in, on the edges of, and outside [0, 1]


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _rng():
  return np.random.default_rng(0)


def test_gaussians_match_scipy_norm():
  rng = _rng()
  x = rng.uniform(0, 1, (3, 4, 4, 1))
  loc = rng.uniform(0, 1, (2, 3, 4, 4, 1))  # a sample axis in front: broadcasting x
  for name, log_scale in (('gaussian_fixed', math.log(likelihoods.PAPER_SIGMA)),
                          ('gaussian_learned', -1.3), ('gaussian_learned_pixel', None)):
    lik = likelihoods.get(name)
    ls = rng.normal(-1.0, 0.5, (4, 4, 1)) if log_scale is None else np.asarray(log_scale)
    got = lik.log_prob(DecoderOutput(jnp.asarray(loc), jnp.asarray(ls)), jnp.asarray(x))
    assert got.shape == loc.shape and got.dtype == jnp.float64
    np.testing.assert_allclose(got, stats.norm.logpdf(x, loc, np.exp(ls)), rtol=1e-12,
                               err_msg=name)
    np.testing.assert_allclose(lik.mean(DecoderOutput(jnp.asarray(loc), None)), loc)


def test_laplace_matches_scipy_laplace():
  rng = _rng()
  x = rng.uniform(0, 1, (3, 4, 4, 2))
  loc = rng.uniform(0, 1, (2, 3, 4, 4, 2))
  lik = likelihoods.get('laplace_fixed', 0.07)
  assert lik.scale == 'fixed' and lik.support == 'density'
  got = lik.log_prob(DecoderOutput(jnp.asarray(loc), jnp.asarray(lik.fixed_log_scale)),
                     jnp.asarray(x))
  assert got.shape == loc.shape and got.dtype == jnp.float64
  np.testing.assert_allclose(got, stats.laplace.logpdf(x, loc, 0.07), rtol=1e-12)
  np.testing.assert_allclose(lik.mean(DecoderOutput(jnp.asarray(loc), None)), loc)
  # its gradient in loc is the sign of the residual over b: a residual's size, not its square
  grad = jax.grad(lambda m: lik.log_prob(DecoderOutput(m, jnp.log(0.07)), 0.5))
  np.testing.assert_allclose([grad(0.2), grad(0.9)], [1 / 0.07, -1 / 0.07], rtol=1e-12)


def test_bernoulli_matches_scipy_on_binary_x():
  rng = _rng()
  logits = rng.normal(0, 3, (2, 5, 4, 4, 1))
  x = (rng.uniform(size=(5, 4, 4, 1)) < 0.5).astype(np.float64)
  lik = likelihoods.get('bernoulli')
  got = lik.log_prob(DecoderOutput(jnp.asarray(logits), None), jnp.asarray(x))
  p = special.expit(logits)
  np.testing.assert_allclose(got, x * np.log(p) + (1 - x) * np.log1p(-p), rtol=1e-10)
  np.testing.assert_allclose(got, stats.bernoulli.logpmf(np.broadcast_to(x, p.shape), p),
                             rtol=1e-10)
  np.testing.assert_allclose(lik.mean(DecoderOutput(jnp.asarray(logits), None)), p, rtol=1e-12)


def _grid(name, dtype=jnp.float64):
  """log P(k) for every scale in SCALES, loc in LOCS and k = 0..255: [S, L, 256], one call."""
  x = jnp.arange(256, dtype=dtype) / 255.0
  loc = jnp.asarray(LOCS, dtype)[None, :, None]
  log_scale = jnp.log(jnp.asarray(SCALES, dtype))[:, None, None]
  shape = (len(SCALES), len(LOCS), 256)
  out = DecoderOutput(jnp.broadcast_to(loc, shape), jnp.broadcast_to(log_scale, shape))
  return np.asarray(likelihoods.get(name).log_prob(out, x), np.float64)


def _scipy_bins(dist, loc, scale):
  """log(F(hi) − F(lo)) per bin, on the accurate side (CDF below loc, survival above)."""
  k = np.arange(256)
  hi = np.where(k == 255, np.inf, (k + 0.5) / 255)
  lo = np.where(k == 0, -np.inf, (k - 0.5) / 255)
  d = dist(loc, scale)
  with np.errstate(divide='ignore'):
    return np.where(k / 255 > loc, np.log(d.sf(lo) - d.sf(hi)), np.log(d.cdf(hi) - d.cdf(lo)))


@pytest.mark.parametrize('name', sorted(DISCRETIZED))
def test_discretized_match_scipy_cdf_differences(name):
  got_all = _grid(name)
  assert np.all(np.isfinite(got_all))
  for i, scale in enumerate(SCALES):
    for j, loc in enumerate(LOCS):
      got = got_all[i, j]
      ref = _scipy_bins(DISCRETIZED[name], loc, scale)
      ok = ref > -600  # scipy's CDF differences lose precision once they are subnormal
      assert ok.any()
      np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-6, atol=1e-7,
                                 err_msg=f'{name} loc={loc} scale={scale}')


@pytest.mark.parametrize('name', sorted(DISCRETIZED))
@pytest.mark.parametrize('dtype, tol', [(jnp.float64, 1e-9), (jnp.float32, 2e-4)])
def test_discretized_sum_to_one_over_256_values(name, dtype, tol):
  with jax.enable_x64(dtype == jnp.float64):
    total = np.exp(special.logsumexp(_grid(name, dtype), axis=-1))  # [S, L]
  np.testing.assert_allclose(total, 1.0, atol=tol, rtol=0)


def test_discretized_quantise_like_the_host():
  """x off the grid is scored as its 8-bit value round(255 x), like scores.finish does."""
  lik = likelihoods.get('discretized_logistic')
  out = DecoderOutput(jnp.full(3, 0.4), jnp.full(3, -2.0))
  on = lik.log_prob(out, jnp.array([100.0, 0.0, 255.0]) / 255.0)
  off = lik.log_prob(out, jnp.array([100.3, -0.2, 255.4]) / 255.0)
  np.testing.assert_allclose(off, on)


@pytest.mark.parametrize('name', sorted(DISCRETIZED))
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.float64])
def test_discretized_gradients_are_finite_everywhere(name, dtype):
  """d log P / d(loc, log s) at the edge bins, next to them and inside, for loc on and near
  the edges and s from 1e-6 to 1e7 (all combinations, elementwise in one call)."""
  lik = likelihoods.get(name)
  with jax.enable_x64(dtype == jnp.float64):
    x = jnp.array([0.0, 1.0 / 255, 0.5, 254.0 / 255, 1.0], dtype)[None, None, :]
    loc = jnp.array([0.0, 1e-6, 0.5, 1.0 - 1e-6, 1.0], dtype)[:, None, None]
    log_scale = jnp.log(jnp.array([1e-6, 1e-3, 0.1, 1.0, 1e4, 1e7], dtype))[None, :, None]
    shape = (5, 6, 5)
    loc, log_scale = jnp.broadcast_to(loc, shape), jnp.broadcast_to(log_scale, shape)

    def total(loc, log_scale):
      return jnp.sum(lik.log_prob(DecoderOutput(loc, log_scale), x))

    value = lik.log_prob(DecoderOutput(loc, log_scale), x)
    g_loc, g_ls = jax.jit(jax.grad(total, argnums=(0, 1)))(loc, log_scale)
  assert np.all(np.isfinite(value))
  assert np.all(np.isfinite(g_loc)) and np.all(np.isfinite(g_ls)), (
      np.argwhere(~np.isfinite(g_loc)), np.argwhere(~np.isfinite(g_ls)))


@pytest.mark.parametrize('name', sorted(DISCRETIZED))
def test_discretized_gradient_matches_finite_difference(name):
  """Elementwise d log P / d log s against central differences, also across the switch to
  the midpoint rule (large s) and for bins much wider than s."""
  lik = likelihoods.get(name)
  x = jnp.array([0.0, 0.2, 0.6, 1.0])[None, :]
  log_scale = jnp.broadcast_to(jnp.array([-6.0, -2.0, 0.0, 5.0, 7.0])[:, None], (5, 4))

  def per_element(ls):
    return lik.log_prob(DecoderOutput(jnp.full(ls.shape, 0.3), ls), x)

  g = jax.jit(jax.grad(lambda ls: jnp.sum(per_element(ls))))(log_scale)
  eps = 1e-6
  fd = (per_element(log_scale + eps) - per_element(log_scale - eps)) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)


def test_log_prob_8bit_conversion():
  d = 784
  log_px = jnp.array([-100.0, 50.0])
  for name in DISCRETIZED:
    lik = likelihoods.get(name)
    assert lik.support == 'uint8'
    np.testing.assert_allclose(likelihoods.log_prob_8bit(lik, log_px, d), log_px)
  gauss = likelihoods.get('gaussian_fixed')
  assert gauss.support == 'density'
  np.testing.assert_allclose(likelihoods.log_prob_8bit(gauss, log_px, d),
                             log_px - d * math.log(255.0))
  with pytest.raises(ConfigError, match='discretized_logistic'):
    likelihoods.log_prob_8bit(likelihoods.get('bernoulli'), log_px, d)


def test_density_conversion_approximates_the_bin_probability():
  """For σ ≫ 1/255, log N(x; μ, σ) − log 255 ≈ log P(bin) of the discretised Gaussian; the
  error is the midpoint rule's, ≈ (Δ/σ)² (t² − 1) / 24 ≈ 1.3e-4 here (Δ/σ ≈ 0.02, |t| ≤ 3)."""
  x = jnp.arange(1, 255) / 255.0  # interior bins
  out = DecoderOutput(jnp.full(254, 0.4), jnp.full(254, math.log(0.2)))
  density = likelihoods.get('gaussian_learned').log_prob(out, x)
  binned = likelihoods.get('discretized_gaussian').log_prob(out, x)
  np.testing.assert_allclose(likelihoods.log_prob_8bit(likelihoods.get('gaussian_learned'),
                                                       density, 1), binned, atol=3e-4)


def test_get_validates():
  with pytest.raises(ConfigError, match='discretized_logistic'):
    likelihoods.get('poisson')
  with pytest.raises(ConfigError, match='sigma'):
    likelihoods.get('gaussian_fixed', 0.0)
  assert set(likelihoods.NAMES) >= {'gaussian_fixed', 'bernoulli', *DISCRETIZED}


def test_heteroscedastic_gaussian_matches_scipy_with_a_scale_per_pixel():
  rng = _rng()
  x = rng.uniform(0, 1, (3, 4, 4, 2))
  loc = rng.uniform(0, 1, (2, 3, 4, 4, 2))
  log_scale = rng.normal(-2.0, 1.0, (2, 3, 4, 4, 2))  # one σ per sample, image, pixel, channel
  lik = likelihoods.get('gaussian_hetero')
  assert lik.scale == 'predicted' and lik.support == 'density'
  got = lik.log_prob(DecoderOutput(jnp.asarray(loc), jnp.asarray(log_scale)), jnp.asarray(x))
  np.testing.assert_allclose(got, stats.norm.logpdf(x, loc, np.exp(log_scale)), rtol=1e-12)


def test_discretised_logistic_with_a_predicted_scale_sums_to_one():
  rng = _rng()
  loc = rng.uniform(-0.2, 1.2, (5, 1, 1, 1))
  log_scale = rng.normal(-3.0, 1.5, (5, 1, 1, 1))
  lik = likelihoods.get('discretized_logistic_hetero')
  k = jnp.arange(256, dtype=jnp.float64).reshape(256, 1, 1, 1, 1) / 255.0
  logp = lik.log_prob(DecoderOutput(jnp.asarray(loc), jnp.asarray(log_scale)), k)
  np.testing.assert_allclose(special.logsumexp(np.asarray(logp), axis=0), 0.0, atol=1e-9)
