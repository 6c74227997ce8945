"""Test-time projection (vae_qc.projection): the update rule against a float64 numpy
computation for a linear model, batch independence, the map in pixel_maps and the Scorer, and
the settings' errors."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_qc import evaluate
from vae_qc import likelihoods
from vae_qc import models
from vae_qc import projection
from vae_qc import scores
from vae_qc.errors import ConfigError
from vae_qc.models import Posterior

H, W, C, L = 6, 6, 1, 3
D = H * W * C
SIGMA, LOG_SCALE_Q = 0.1, -1.0
RNG = np.random.default_rng(0)
B = RNG.normal(0, 0.1, (L, D))  # decoder mean = μ B + b
A = np.linalg.pinv(B)  # encoder mean μ = (x − b) A: it reconstructs images of the form z B + b
BIAS = RNG.uniform(0.4, 0.6, D)


def _linear_fns():
  """A linear encoder and decoder, Gaussian of fixed σ = 0.1 (the decoder mean unsquashed)."""
  a, b, bias = (jnp.asarray(v, jnp.float32) for v in (A, B, BIAS))

  def encode(x):
    mean = (jnp.reshape(x, (x.shape[0], -1)) - bias) @ a
    return Posterior(mean, jnp.full_like(mean, LOG_SCALE_Q))

  def decode(z):
    return likelihoods.DecoderOutput((z @ b + bias).reshape(z.shape[:-1] + (H, W, C)),
                                     jnp.asarray(math.log(SIGMA), jnp.float32))

  return models.ModelFns(encode, decode, likelihoods.get('gaussian_fixed', SIGMA))


def _reference(x, steps, rate, l1):
  """The projection in float64: E(x') = Σ r²/(2σ²) + KL(μ = (x' − b)A) + λ Σ|x' − x|, with
  r = x' − x̂ = (x' − b)(I − AB)."""
  x0 = np.asarray(x, np.float64).reshape(len(x), -1)
  xp = x0.copy()
  m = np.eye(D) - A @ B
  for _ in range(steps):
    mu = (xp - BIAS) @ A
    r = (xp - BIAS) @ m
    grad = r @ m.T / SIGMA ** 2 + mu @ A.T + l1 * np.sign(xp - x0)
    move = np.clip(rate * grad * r ** 2, -np.abs(r), np.abs(r))
    xp = np.clip(xp - move, 0.0, 1.0)
  return xp.reshape(x.shape)


@pytest.fixture(scope='module')
def images():
  # good images: the model's own, plus a little noise; image 1 has a bright defect
  x = RNG.normal(0, 1, (4, L)) @ B + BIAS + RNG.normal(0, 0.01, (4, D))
  x = x.reshape(4, H, W, C)
  x[1, 2:4, 2:4] = 1.0
  return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize('rate,l1', [(0.5, 5.0), (5.0, 0.0), (0.05, 50.0)])
@pytest.mark.parametrize('steps,atol', [(1, 2e-6), (4, 1e-3)])
def test_projection_matches_float64_reference(images, rate, l1, steps, atol):
  # after the first step, a pixel next to its start point can take either sign of the L1
  # term's subgradient by float32 rounding: later steps agree less closely
  got = projection.project(_linear_fns(), images, steps=steps, rate=rate, l1_weight=l1)
  want = _reference(images, steps, rate, l1)
  np.testing.assert_allclose(got, want, atol=atol)
  assert np.all((np.asarray(got) >= 0) & (np.asarray(got) <= 1))


def test_projection_moves_the_unexplained_pixels_and_is_per_image(images):
  fns = _linear_fns()
  kw = dict(steps=5, rate=0.5, l1_weight=5.0)
  amap = np.asarray(projection.projection_map(fns, images, **kw))  # [B, H, W]
  assert amap.shape == (4, H, W)
  x_star = np.asarray(projection.project(fns, images, **kw), np.float64)
  np.testing.assert_allclose(amap, np.mean((np.asarray(images, np.float64) - x_star) ** 2,
                                           axis=-1), atol=1e-6)
  # an image's projection does not depend on the images batched with it (up to float32
  # rounding of the batched products, which the steps' signs and clips can amplify)
  alone = np.asarray(projection.projection_map(fns, images[1:2], **kw))
  np.testing.assert_allclose(alone[0], amap[1], atol=2e-4)
  # the defect moved more than the rest of its image
  assert amap[1, 2:4, 2:4].min() > 5 * np.delete(amap[1].ravel(), [14, 15, 20, 21]).max()


def test_pixel_maps_make_the_projection_map_only_when_asked(images):
  fns = _linear_fns()
  keys = jax.random.key(0)
  assert 'projection' not in scores.pixel_maps(fns, images, keys, 2)
  kw = dict(steps=3, rate=0.5, l1_weight=5.0)
  maps = scores.pixel_maps(fns, images, keys, 2, projection=kw)
  np.testing.assert_allclose(maps['projection'], projection.projection_map(fns, images, **kw),
                             atol=1e-7)
  forms = scores.add_smoothed_maps(jax.device_get(maps), 1.0)
  assert {'projection_smooth', 'projection_excess', 'projection_logratio'} <= set(forms)
  assert forms['projection_logratio'].shape == (4, H, W)


def test_scorer_makes_the_projection_map_when_it_is_the_configured_map():
  from tests.conftest import tiny_model_config  # pylint: disable=g-import-not-at-top
  model_cfg = tiny_model_config()
  variables = jax.device_get(models.init(model_cfg, jax.random.key(0)))
  shape = model_cfg.image_shape
  x = np.random.default_rng(1).uniform(size=(3,) + tuple(shape)).astype(np.float32)
  base = evaluate.EvalSettings(scores=('neg_elbo',), elbo_samples=2, map_samples=2,
                               batch_size=4)
  assert 'projection' not in evaluate.Scorer(model_cfg, base).maps(variables, x)
  settings = dataclasses.replace(base, map='projection_logratio', projection_steps=2)
  maps = evaluate.Scorer(model_cfg, settings).maps(variables, x)
  assert maps['projection'].shape == (3,) + tuple(shape[:2])
  assert np.all(np.isfinite(maps['projection'])) and np.all(maps['projection'] >= 0)


@pytest.mark.parametrize('field,value,message', [
    ('projection_steps', 0, 'projection_steps must be >= 1'),
    ('projection_rate', 0.0, 'projection_rate (the step size α) must be > 0'),
    ('projection_l1', -1.0, 'projection_l1 (λ, nats per unit of grey-level change) must be >= 0'),
])
def test_bad_projection_settings_are_config_errors(field, value, message):
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dataclasses.asdict(evaluate.EvalSettings()))
  cfg[field] = value
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    evaluate.EvalSettings.from_config(cfg)
