"""Scores: registry, units, complexity correction (device + host parts), per-pixel maps.

A tiny linear model (float32) stands in for the VAE; one test runs the real tiny VAE through
``evaluate.Scorer`` (the jit + host path that evaluation and prediction use).
"""
import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_qc import complexity
from vae_qc import estimators
from vae_qc import evaluate
from vae_qc import likelihoods
from vae_qc import models
from vae_qc import scores
from vae_qc.errors import ConfigError, EstimatorError
from vae_qc.models import Posterior

H, W, C, L = 8, 8, 1, 2
D = H * W * C


@dataclasses.dataclass(frozen=True)
class Eval:
  elbo_samples: int = 4
  log_px_samples: int = 8
  chunk_size: int = 4


CFG = Eval()


def _toy_fns(likelihood_name):
  """A linear encoder and a linear decoder (sigmoid mean or logits) with a fixed scale."""
  rng = np.random.default_rng(0)
  w_enc = jnp.asarray(rng.normal(0, 0.1, (D, L)), jnp.float32)
  w_dec = jnp.asarray(rng.normal(0, 1.0, (L, D)), jnp.float32)
  lik = likelihoods.get(likelihood_name)

  def encode(x):
    mean = jnp.reshape(x, (x.shape[0], -1)) @ w_enc
    return Posterior(mean, jnp.full_like(mean, -1.0))

  def decode(z):
    loc = (z @ w_dec).reshape(z.shape[:-1] + (H, W, C))
    if lik.loc_activation == 'sigmoid':
      loc = jax.nn.sigmoid(loc)
    return likelihoods.DecoderOutput(loc, jnp.asarray(math.log(0.1), jnp.float32))

  return models.ModelFns(encode, decode, lik)


FNS = {name: _toy_fns(name) for name in ('discretized_logistic', 'gaussian_fixed', 'bernoulli')}


@pytest.fixture(scope='module')
def images():
  """[6, 8, 8, 1] float32 on the 8-bit grid: blobs of different sizes (different complexity)."""
  yy, xx = np.mgrid[0:H, 0:W]
  ims = [np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / r) for r in (1, 2, 4, 8, 16, 32)]
  return (np.round(np.stack(ims)[..., None] * 255) / 255).astype(np.float32)


KEYS = jax.random.split(jax.random.key(0), 6)


def test_bits_per_dim():
  assert scores.bits_per_dim(-8 * D * math.log(2.0), D) == pytest.approx(8.0)
  np.testing.assert_allclose(scores.bits_per_dim(np.array([0.0, -D * math.log(2.0)]), D),
                             [0.0, 1.0], atol=1e-12)
  assert scores.nats_to_bits(math.log(2.0)) == pytest.approx(1.0)


def test_registry_errors():
  with pytest.raises(ConfigError, match='registered: .*neg_log_px_minus_complexity'):
    scores.get(['neg_elbo', 'nope'])
  with pytest.raises(ConfigError, match='empty'):
    scores.get([])
  with pytest.raises(ValueError, match='already registered'):
    scores.register('neg_elbo')(lambda *a: None)
  for name in ('neg_elbo', 'neg_log_px', 'recon_error', 'kl', 'complexity', 'neg_log_p_8bit',
               'neg_log_px_minus_complexity', 'neg_elbo_minus_complexity'):
    assert scores.SCORES[name].doc


def test_complexity_corrected_scores_with_a_discretised_likelihood(images):
  fns = FNS['discretized_logistic']
  names = ('neg_elbo', 'neg_log_px', 'neg_log_p_8bit', 'complexity',
           'neg_log_px_minus_complexity', 'neg_elbo_minus_complexity')
  device = {k: np.asarray(v) for k, v in scores.compute(fns, images, KEYS, names, CFG).items()}
  out = scores.finish(names, images, device)
  u8 = np.round(images * 255).astype(np.uint8)
  length = complexity.compressed_nats(u8, 'png')
  # A discretised likelihood is already a probability of the 8-bit image: no conversion.
  np.testing.assert_allclose(out['neg_log_p_8bit'], out['neg_log_px'], rtol=1e-6)
  np.testing.assert_allclose(out['complexity'], length)
  np.testing.assert_allclose(out['neg_log_px_minus_complexity'], out['neg_log_px'] - length,
                             rtol=1e-6)
  np.testing.assert_allclose(out['neg_elbo_minus_complexity'], out['neg_elbo'] - length,
                             rtol=1e-6)
  for name in names:
    assert out[name].shape == (6,) and np.all(np.isfinite(out[name])), name
  # Both terms are code lengths of the same 8-bit image: −log P ≥ 0 and on the scale of L.
  assert np.all(out['neg_log_p_8bit'] > 0)


def test_continuous_likelihood_is_converted_and_warned(images, caplog):
  fns = FNS['gaussian_fixed']
  names = ('neg_log_px', 'neg_log_p_8bit')
  with caplog.at_level(logging.WARNING):
    out = scores.compute(fns, images, KEYS, names, CFG)
  np.testing.assert_allclose(out['neg_log_p_8bit'], out['neg_log_px'] + D * math.log(255.0),
                             rtol=1e-6)
  assert 'discretized_logistic' in caplog.text


def test_bernoulli_complexity_score_is_a_config_error(images):
  with pytest.raises(ConfigError, match='not a distribution over 8-bit'):
    scores.compute(FNS['bernoulli'], images, KEYS, ('neg_log_px_minus_complexity',), CFG)
  # The same, checkable before training.
  with pytest.raises(ConfigError, match='not a distribution over 8-bit'):
    scores.check_compatible(('neg_elbo', 'neg_elbo_minus_complexity'),
                            likelihoods.get('bernoulli'))
  scores.check_compatible(('neg_elbo', 'neg_elbo_minus_complexity', 'neg_log_p_8bit'),
                          likelihoods.get('discretized_logistic'))
  scores.check_compatible(('neg_elbo', 'kl'), likelihoods.get('bernoulli'))


def test_register_complexity_score_variant(images):
  score = scores.register_complexity_score('test_nlp_minus_zlib', compressor='zlib')
  try:
    assert score.host_fn is not None
    u8 = np.round(images * 255).astype(np.uint8)
    got = score.host_fn(u8, np.zeros(6))
    np.testing.assert_allclose(got, -complexity.compressed_nats(u8, 'zlib'))
  finally:
    scores.unregister('test_nlp_minus_zlib')
  with pytest.raises(ConfigError, match='compressor'):
    scores.register_complexity_score('test_bad', compressor='gif')


def test_pixel_maps_shapes_and_sum(images):
  fns = FNS['discretized_logistic']
  maps = scores.pixel_maps(fns, images, KEYS, CFG.elbo_samples)
  assert maps['nll'].shape == (6, H, W)
  assert maps['abs_error'].shape == (6, H, W)
  assert maps['reconstruction'].shape == (6, H, W, C)
  # Summed over pixels, the nll map is −(1/S) Σ_s log p(x|z_s) = −(ELBO + KL), the same
  # samples as the estimator's with the same keys and K = S.
  stats = estimators.sample_stats(fns.encode, fns.log_likelihood, images, KEYS,
                                  CFG.elbo_samples, CFG.chunk_size)
  per_image = np.sum(np.asarray(maps['nll']), axis=(1, 2))
  np.testing.assert_allclose(per_image, -np.asarray(stats.mean_log_lik), rtol=1e-5)
  elbo = np.asarray(estimators.elbo.reduce(stats))
  np.testing.assert_allclose(per_image.mean(), -(elbo + np.asarray(stats.kl)).mean(), rtol=1e-5)


def test_sq_error_map_is_the_fixed_sigma_nll_above_its_floor(images):
  """sq_error = (1/S) Σ_s mean_c (x − E[x|z_s])², checked against a float64 numpy computation
  from the same samples; for a Gaussian of fixed σ, nll = C·sq_error/(2σ²) + C·log(σ√(2π))."""
  fns = FNS['gaussian_fixed']
  s = 3
  maps = scores.pixel_maps(fns, images, KEYS, s)
  assert maps['sq_error'].shape == (6, H, W)
  post = fns.encode(images)
  eps = estimators.noise(estimators.per_example_keys(KEYS, 6), jnp.arange(s), L, jnp.float32)
  f64 = lambda a: np.asarray(a, np.float64)
  z = f64(post.mean) + np.exp(f64(post.log_scale)) * f64(eps)
  means = np.asarray(fns.likelihood.mean(fns.decode(jnp.asarray(z, jnp.float32))), np.float64)
  want = np.mean((np.asarray(images, np.float64) - means) ** 2, axis=(0, -1))
  np.testing.assert_allclose(maps['sq_error'], want, rtol=1e-4, atol=1e-7)
  sigma = 0.1  # the toy decoder's scale
  floor = C * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
  np.testing.assert_allclose(maps['nll'], C * want / (2 * sigma ** 2) + floor, rtol=1e-4,
                             atol=1e-3)

  # With a fixed σ the standardised residual is sq_error / σ²: the same ratios.
  np.testing.assert_allclose(maps['z_error'], want / sigma ** 2, rtol=1e-4, atol=1e-5)


def test_z_error_map_of_a_heteroscedastic_decoder(images):
  """z_error = (1/S) Σ_s mean_c ((x − μ_s) / σ_s)² with a σ per pixel predicted from z (float64
  reference from the same samples), and it is the surprise part of the nll map:
  2·nll = C·z_error + 2·E_s Σ_c log σ_s + C·log 2π."""
  rng = np.random.default_rng(1)
  w_dec = jnp.asarray(rng.normal(0, 1.0, (L, 2 * D)), jnp.float32)
  w_enc = jnp.asarray(rng.normal(0, 0.1, (D, L)), jnp.float32)
  lik = likelihoods.get('gaussian_hetero')

  def encode(x):
    mean = jnp.reshape(x, (x.shape[0], -1)) @ w_enc
    return Posterior(mean, jnp.full_like(mean, -1.0))

  def decode(z):
    h = (z @ w_dec).reshape(z.shape[:-1] + (H, W, 2 * C))
    return likelihoods.DecoderOutput(jax.nn.sigmoid(h[..., :C]), -2.0 + 0.5 * jnp.tanh(h[..., C:]))

  fns = models.ModelFns(encode, decode, lik)
  s = 3
  maps = scores.pixel_maps(fns, images, KEYS, s)
  eps = estimators.noise(estimators.per_example_keys(KEYS, 6), jnp.arange(s), L, jnp.float32)
  f64 = lambda a: np.asarray(a, np.float64)
  post = encode(images)
  z = f64(post.mean) + np.exp(f64(post.log_scale)) * f64(eps)
  h = z @ f64(w_dec)
  h = h.reshape(z.shape[:-1] + (H, W, 2 * C))
  mu, log_sigma = 1 / (1 + np.exp(-h[..., :C])), -2.0 + 0.5 * np.tanh(h[..., C:])
  zz = ((f64(images) - mu) / np.exp(log_sigma)) ** 2
  want = np.mean(zz, axis=(0, -1))
  np.testing.assert_allclose(maps['z_error'], want, rtol=1e-4, atol=1e-5)
  log_sigma_sum = np.mean(np.sum(log_sigma, axis=-1), axis=0)
  np.testing.assert_allclose(maps['nll'], 0.5 * C * want + log_sigma_sum
                             + 0.5 * C * math.log(2 * math.pi), rtol=1e-4, atol=1e-3)
  # Unlike sq_error, the map does not flag where the model expected a large residual.
  ratio = np.asarray(maps['z_error']) / np.asarray(maps['sq_error'])
  assert np.ptp(ratio) > 0.5 * np.min(ratio)


def test_recon_error_and_kl(images):
  fns = FNS['discretized_logistic']
  out = scores.compute(fns, images, KEYS, ('recon_error', 'kl'), CFG)
  mean = fns.decode(fns.encode(images).mean).loc
  np.testing.assert_allclose(out['recon_error'], np.sum((images - mean) ** 2, axis=(1, 2, 3)),
                             rtol=1e-5)
  assert np.all(np.asarray(out['kl']) >= 0)


def test_non_finite_images_raise(images):
  bad = images.copy()
  bad[1, 2, 3, 0] = np.nan
  with pytest.raises(EstimatorError, match=r'examples \[1\]'):
    scores.compute(FNS['discretized_logistic'], bad, KEYS, ('recon_error',), CFG)


def test_scorer_runs_complexity_scores_through_jit(tiny_images):
  """The real (tiny) VAE through evaluate.Scorer: jit-compiled device part, host part after."""
  model_cfg = models.ModelConfig(image_shape=(8, 8, 1), blocks=(4,), fc=8, latent=2,
                                 likelihood='discretized_logistic')
  settings = evaluate.EvalSettings(
      scores=('neg_log_px', 'neg_log_px_minus_complexity', 'complexity'), elbo_samples=2,
      log_px_samples=6, chunk_size=4, map_samples=2, batch_size=16)
  variables = jax.jit(lambda k: models.init(model_cfg, k))(jax.random.key(0))
  x = np.round(tiny_images[:20] * 255) / 255
  out = evaluate.Scorer(model_cfg, settings).scores(variables, x)
  length = complexity.compressed_nats(np.round(x * 255).astype(np.uint8))
  np.testing.assert_allclose(out['complexity'], length)
  np.testing.assert_allclose(out['neg_log_px_minus_complexity'], out['neg_log_px'] - length,
                             rtol=1e-5)
  assert all(np.all(np.isfinite(v)) for v in out.values())


@pytest.mark.parametrize('tile', [0, 8])  # whole 8×8 images, or 8-px tiles of 16×16 ones
def test_the_map_pass_gives_the_score_passes_neg_elbo(tiny_images, tile):
  """With K = elbo_samples = map_samples the map pass's Σ nll + KL is the −ELBO of the score
  pass (the same per-image samples), so a scorer whose only tile score is neg_elbo makes one
  pass; its scores and maps equal those of two passes."""
  from vae_qc.data import tiling as tiling_lib  # pylint: disable=g-import-not-at-top
  model_cfg = models.ModelConfig(image_shape=(8, 8, 1), blocks=(4,), fc=8, latent=2)
  variables = jax.jit(lambda k: models.init(model_cfg, k))(jax.random.key(0))
  x = tiny_images[:12]
  if tile:
    x = np.concatenate([np.concatenate([x[:6], x[6:]], axis=1)] * 2, axis=2)  # [6, 16, 16, 1]
  tiling = tiling_lib.Tiling(size=tile, stride=tile // 2) if tile else tiling_lib.Tiling()
  base = dict(elbo_samples=3, map_samples=3, chunk_size=2, batch_size=5, map_sigma=1.0,
              map_topk=4)
  fused = evaluate.Scorer(model_cfg, evaluate.EvalSettings(scores=('map_topk', 'neg_elbo'),
                                                           **base))
  assert fused.elbo_from_maps
  apart = evaluate.Scorer(model_cfg, evaluate.EvalSettings(
      scores=('map_topk', 'neg_elbo', 'kl'), **base))  # a second tile score: two passes
  assert not apart.elbo_from_maps
  assert not evaluate.Scorer(model_cfg, evaluate.EvalSettings(
      scores=('map_topk', 'neg_elbo'), **dict(base, map_samples=2))).elbo_from_maps
  calls = {'scores': 0}
  plain_scores = fused.scores
  fused.scores = lambda *a: (calls.__setitem__('scores', calls['scores'] + 1), plain_scores(*a))[1]
  one, one_maps = evaluate.score_images(fused, variables, x, tiling, with_maps=True)
  two, two_maps = evaluate.score_images(apart, variables, x, tiling, with_maps=True)
  assert calls['scores'] == 0  # no score pass
  np.testing.assert_allclose(one['neg_elbo'], two['neg_elbo'], rtol=1e-5)
  np.testing.assert_array_equal(one['map_topk'], two['map_topk'])
  for name in ('nll', 'sq_error', 'reconstruction'):
    np.testing.assert_array_equal(np.asarray(one_maps[name]), np.asarray(two_maps[name]))
  assert 'neg_elbo' not in fused.maps(variables, x[:, :8, :8]) and 'kl' not in one_maps


def _numpy_gaussian_smooth(amap, sigma):
  """Independent reference: a normalised 1-D kernel truncated at 4σ (scipy's rounding), mirrored
  edges ('symmetric' = scipy's 'reflect'), applied along rows then columns in float64."""
  radius = int(4.0 * sigma + 0.5)
  t = np.arange(-radius, radius + 1)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  k /= k.sum()
  out = np.asarray(amap, np.float64)
  for axis in (0, 1):
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(out, pad, mode='symmetric')
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode='valid'), axis, padded)
  return out


@pytest.mark.parametrize('sigma', [0.7, 2.0, 4.0])
def test_map_scores_match_a_numpy_reference(sigma):
  rng = np.random.default_rng(1)
  maps = [rng.gamma(2.0, 1.0, (23, 31)), rng.gamma(2.0, 1.0, (40, 17))]  # two sizes
  maps[1][5:9, 3:6] += 25.0  # a defect
  cfg = evaluate.EvalSettings(scores=('map_max', 'map_topk', 'map_max_raw', 'map_topk_raw',
                                      'map_max_excess'), map_sigma=sigma, map_topk=7)
  got = scores.map_values(
      cfg.scores, scores.add_smoothed_maps({'nll': maps, 'abs_error': maps}, sigma), cfg)
  for i, m in enumerate(maps):
    smooth = _numpy_gaussian_smooth(m, sigma)
    np.testing.assert_allclose(scores.smooth_map(m, sigma), smooth, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got['map_max'][i], smooth.max(), rtol=1e-5)
    np.testing.assert_allclose(got['map_topk'][i], np.sort(smooth.ravel())[-7:].mean(), rtol=1e-5)
    np.testing.assert_allclose(got['map_max_excess'][i], smooth.max() - np.median(smooth),
                               rtol=1e-5)
    np.testing.assert_allclose(
        scores.add_smoothed_maps({'nll': [m], 'abs_error': [m]}, sigma)['nll_excess'][0],
        smooth - np.median(smooth), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got['map_max_raw'][i], m.max(), rtol=1e-12)
    np.testing.assert_allclose(got['map_topk_raw'][i], np.sort(m.ravel())[-7:].mean(), rtol=1e-12)
  assert got['map_max'][1] > got['map_max'][0]  # the defect wins
  # map scores have no device part: compute() leaves them to map_values()
  assert scores.map_score_names(('neg_elbo', 'map_max')) == ('map_max',)


@pytest.mark.parametrize('low_weight', [0.0, 0.5, 1.0])
def test_log_ratio_map_scores_match_a_numpy_reference(low_weight):
  rng = np.random.default_rng(2)
  maps = [rng.gamma(2.0, 1.0, (30, 26)), rng.gamma(2.0, 1.0, (20, 33))]
  maps[0][4:9, 5:9] *= 30.0  # less likely than typical: a defect the model cannot reconstruct
  maps[1][2:12, 3:15] = 1e-3  # more likely than typical: a smooth region on a texture
  sigma = 2.0
  cfg = evaluate.EvalSettings(scores=('map_max_logratio', 'map_topk_logratio'), map_sigma=sigma,
                              map_topk=9, map='sq_error_logratio', map_low_weight=low_weight)
  full = scores.add_smoothed_maps({'sq_error': maps, 'nll': maps}, sigma, low_weight)
  assert 'nll_logratio' not in full  # the nll is not positive: no log ratio
  got = scores.map_values(cfg.scores, full, cfg)
  for i, m in enumerate(maps):
    smooth = _numpy_gaussian_smooth(m, sigma)
    t = np.log(smooth / np.median(smooth))
    want = np.maximum(t, -low_weight * t)
    np.testing.assert_allclose(full['sq_error_logratio'][i], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got['map_max_logratio'][i], want.max(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got['map_topk_logratio'][i], np.sort(want.ravel())[-9:].mean(),
                               rtol=1e-4, atol=1e-4)
  # the middle of the smooth region scores only through the too-likely side, w·|t|
  centre = full['sq_error_logratio'][1][7, 9]
  assert centre == 0 if low_weight == 0 else centre > low_weight * 3.0
  # the ratio does not change when a contrast change scales the whole residual
  scaled = scores.add_smoothed_maps({'sq_error': [7.0 * maps[0]]}, sigma, low_weight)
  np.testing.assert_allclose(scaled['sq_error_logratio'][0], full['sq_error_logratio'][0],
                             atol=1e-4)
  # an exactly zero residual stays finite
  assert np.all(np.isfinite(scores.log_ratio(np.zeros((5, 5)), low_weight)))


def test_post_smoothed_log_ratio_matches_a_numpy_reference_and_scores_a_ring_and_its_core():
  # A hole's signature: a ring of too much residual (its edge, redrawn a pixel off) around a
  # core of too little (its inside, darker and so flatter than the texture).
  rng = np.random.default_rng(4)
  m = rng.gamma(2.0, 1.0, (48, 48))
  yy, xx = np.mgrid[:48, :48]
  r = np.hypot(yy - 24, xx - 24)
  m[(r >= 6) & (r < 9)] *= 3.0
  m[r < 6] *= 0.05
  sigma, post, w = 2.0, 5.0, 0.5
  cfg = evaluate.EvalSettings(scores=('map_topk_logratio',), map_sigma=sigma, map_topk=9,
                              map='sq_error_logratio', map_low_weight=w, map_post_sigma=post)
  full = scores.add_smoothed_maps({'sq_error': [m]}, sigma, w, post)
  t = np.log(_numpy_gaussian_smooth(m, sigma) / np.median(_numpy_gaussian_smooth(m, sigma)))
  want = _numpy_gaussian_smooth(np.maximum(t, -w * t), post)
  np.testing.assert_allclose(full['sq_error_logratio'][0], want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(scores.map_values(cfg.scores, full, cfg)['map_topk_logratio'],
                             [np.sort(want.ravel())[-9:].mean()], rtol=1e-4, atol=1e-4)
  # the core adds to the ring's score where smoothing before the ratio cancels them
  one_stage = scores.add_smoothed_maps({'sq_error': [m]}, post, w)['sq_error_logratio'][0]
  two_stage = full['sq_error_logratio'][0]
  assert two_stage[24, 24] > 2 * one_stage[24, 24]
  assert two_stage[24, 24] > 4 * np.median(two_stage)
  with pytest.raises(ConfigError, match=r'map_post_sigma .* must be >= 0'):
    evaluate.EvalSettings.from_config({'scores': ('map_max',), 'map_post_sigma': -1.0})


def test_log_ratio_settings_are_checked():
  with pytest.raises(ConfigError, match=r'map_low_weight .* must be in \[0, 1\]'):
    evaluate.EvalSettings.from_config({'scores': ('map_max',), 'map_low_weight': 1.5})
  with pytest.raises(ConfigError, match="set config.eval.map to 'sq_error_logratio'"):
    evaluate.EvalSettings.from_config({'scores': ('map_topk_logratio',), 'map': 'nll_excess'})
  for positive in ('sq_error_logratio', 'z_error_logratio', 'abs_error_logratio'):
    evaluate.EvalSettings.from_config({'scores': ('map_topk_logratio',), 'map': positive})
  # map scores of the standardised residual read its log-ratio form
  z = np.random.default_rng(3).gamma(2.0, 1.0, (1, 12, 12)).astype(np.float32)
  cfg = evaluate.EvalSettings(scores=('map_max_logratio',), map_sigma=1.0, map='z_error_logratio')
  full = scores.add_smoothed_maps({'z_error': z, 'sq_error': 4.0 * z + 1.0}, 1.0)
  np.testing.assert_allclose(scores.map_values(cfg.scores, full, cfg)['map_max_logratio'],
                             [full['z_error_logratio'][0].max()])


def test_map_forms_are_derived_once_and_only_when_read(monkeypatch):
  rng = np.random.default_rng(4)
  base = {'nll': rng.normal(size=(2, 9, 11)), 'sq_error': rng.gamma(2.0, 1.0, (2, 9, 11)),
          'reconstruction': rng.random((2, 9, 11, 1))}
  smoothed = []
  real_smooth = scores.smooth_map
  monkeypatch.setattr(scores, 'smooth_map',
                      lambda m, s: smoothed.append(1) or real_smooth(m, s))
  forms = scores.add_smoothed_maps(base, 1.5, 0.5)
  assert not smoothed  # nothing derived yet
  assert list(forms) == ['nll', 'sq_error', 'reconstruction', 'nll_smooth', 'nll_excess',
                         'sq_error_smooth', 'sq_error_excess', 'sq_error_logratio']
  assert len(forms) == 8 and 'z_error_smooth' not in forms and 'nll_logratio' not in forms
  got = forms['sq_error_logratio']
  assert len(smoothed) == 2  # one smoothing per image, of the one base map read
  assert forms['sq_error_logratio'] is got and forms['sq_error_excess'].shape == (2, 9, 11)
  assert len(smoothed) == 2  # the smoothed map is shared by the forms of its base
  for i in range(2):
    smooth = real_smooth(base['sq_error'][i], 1.5)
    np.testing.assert_allclose(got[i], scores.log_ratio(smooth, 0.5), rtol=1e-6)
    np.testing.assert_allclose(forms['nll_excess'][i],
                               scores.excess(real_smooth(base['nll'][i], 1.5)), rtol=1e-6)
  assert forms['reconstruction'] is base['reconstruction']
  with pytest.raises(KeyError):
    forms['nope']
  # maps of several sizes stay lists
  ragged = scores.add_smoothed_maps({'nll': [np.ones((3, 4)), np.ones((5, 2))]}, 1.0)
  assert isinstance(ragged['nll_smooth'], list)
  assert [m.shape for m in ragged['nll_smooth']] == [(3, 4), (5, 2)]


@pytest.mark.parametrize('sigma', [0.0, -1.0])
def test_smoothing_sigma_must_be_positive(sigma):
  with pytest.raises(ConfigError, match=r'map_sigma .* must be > 0'):
    evaluate.EvalSettings.from_config({'scores': ('map_max',), 'map_sigma': sigma})
  with pytest.raises(ConfigError, match='must be > 0'):
    scores.smooth_map(np.zeros((4, 4)), sigma)


def test_unknown_map_is_a_config_error():
  with pytest.raises(ConfigError, match='config.eval.map must be one of'):
    evaluate.EvalSettings.from_config({'scores': ('map_max',), 'map': 'nll_blurred'})


def test_image_keys_read_the_pixels_not_their_last_bit():
  """The same photo read by another path (8 or 16 bit, grey or a grey RGB file converted to
  luminance) draws the same Monte-Carlo noise; a change of one grey level draws other noise."""
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (3, 20, 24, 1)).astype(np.float32) / 255  # an 8-bit file
  sixteen = (grey.astype(np.float64) * 257).astype(np.float32) * np.float32(255 / 65535)
  rgb = np.repeat(grey, 3, axis=-1)
  luminance = (np.float32(0.299) * rgb[..., :1] + np.float32(0.587) * rgb[..., 1:2]
               + np.float32(0.114) * rgb[..., 2:])
  assert np.any(luminance != grey)  # floats that differ in the last bit
  data = lambda x: np.asarray(jax.random.key_data(evaluate.image_keys(x, 7)))
  ref = data(grey)
  for other in (sixteen, luminance, grey + np.float32(1e-7)):
    np.testing.assert_array_equal(data(other), ref)
  edited = grey.copy()
  edited[1, 3, 4, 0] += 1 / 255
  got = data(edited)
  np.testing.assert_array_equal(got[[0, 2]], ref[[0, 2]])
  assert np.any(got[1] != ref[1])
  assert len({tuple(k) for k in ref}) == 3  # three images, three keys
  assert np.any(data(grey[:1]) != np.asarray(jax.random.key_data(evaluate.image_keys(grey[:1], 8))))
