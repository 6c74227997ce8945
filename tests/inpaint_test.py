"""Reconstruction by inpainting (vae_qc.inpaint): the cell groups, the hidden input and the
combined maps against numpy references written out by hand, and the settings' errors."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_qc import evaluate
from vae_qc import inpaint
from vae_qc import likelihoods
from vae_qc import models
from vae_qc import scores
from vae_qc.errors import ConfigError
from vae_qc.models import Posterior

SIGMA = 0.1


def _groups_by_loops(h, w, grid):
  out = np.zeros((h, w), int)
  ch, cw = h // grid, w // grid
  for i in range(h):
    for j in range(w):
      out[i, j] = 2 * ((i // ch) % 2) + (j // cw) % 2
  return out


@pytest.mark.parametrize('h,w,grid', [(8, 8, 4), (32, 32, 4), (16, 32, 2), (12, 12, 3)])
def test_cell_groups(h, w, grid):
  g = inpaint.cell_groups(h, w, grid)
  np.testing.assert_array_equal(g, _groups_by_loops(h, w, grid))
  # no two cells of one group touch, even at a corner
  ch, cw = h // grid, w // grid
  cells = g[::ch, ::cw]
  for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):
    a = cells[max(0, -di):grid - max(0, di), max(0, -dj):grid - max(0, dj)]
    b = cells[max(0, di):, max(0, dj):][:a.shape[0], :a.shape[1]]
    assert not np.any(a == b)


def test_hide_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(3, 8, 8, 2)).astype(np.float32)
  hidden = rng.uniform(size=(3, 8, 8)) < 0.3
  got = np.asarray(inpaint.hide(jnp.asarray(x), jnp.asarray(hidden)))
  want = x.copy()
  for b in range(3):
    for c in range(2):
      fill = x[b, :, :, c][~hidden[b]].mean()
      want[b, :, :, c][hidden[b]] = fill
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_random_hidden_hides_one_whole_group():
  masks = np.asarray(inpaint.random_hidden(jax.random.key(0), 64, 16, 16, 4))
  groups = inpaint.cell_groups(16, 16, 4)
  seen = set()
  for m in masks:
    (g,) = set(groups[m].tolist())  # one group ...
    np.testing.assert_array_equal(m, groups == g)  # ... all of it
    seen.add(g)
  assert seen == {0, 1, 2, 3}


def _copying_fns(h, w, c):
  """A model that redraws exactly what its encoder sees (z = the input, σ_q tiny)."""

  def encode(x):
    mean = jnp.reshape(x, (x.shape[0], -1))
    return Posterior(mean, jnp.full_like(mean, -30.0))

  def decode(z):
    return likelihoods.DecoderOutput(z.reshape(z.shape[:-1] + (h, w, c)),
                                     jnp.asarray(math.log(SIGMA), jnp.float32))

  return models.ModelFns(encode, decode, likelihoods.get('gaussian_fixed', SIGMA))


def test_inpaint_maps_score_each_pixel_from_the_pass_that_hid_it():
  h, w, c, grid = 8, 8, 1, 4
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(2, h, w, c)).astype(np.float32)
  fns = _copying_fns(h, w, c)
  keys = jax.random.split(jax.random.key(0), 2)
  got = jax.jit(lambda x: scores.inpaint_maps(fns, x, keys, 2, grid))(jnp.asarray(x))
  # numpy: a pixel of group g is redrawn as the mean of the pixels outside group g
  groups = inpaint.cell_groups(h, w, grid)
  recon = np.zeros_like(x)
  for b in range(2):
    for g in range(4):
      fill = x[b, ..., 0][groups != g].mean()
      recon[b, ..., 0][groups == g] = fill
  sq = (x - recon)[..., 0] ** 2
  np.testing.assert_allclose(np.asarray(got['sq_error']), sq, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(got['reconstruction']), recon, rtol=1e-5)
  nll = sq / (2 * SIGMA ** 2) + math.log(SIGMA * math.sqrt(2 * math.pi))
  np.testing.assert_allclose(np.asarray(got['nll']), nll, rtol=1e-4, atol=1e-4)
  # without inpainting the copying model leaves no residual at all
  plain = scores.pixel_maps(fns, jnp.asarray(x), keys, 2)
  assert float(jnp.max(plain['sq_error'])) < 1e-10


def test_settings_errors():
  with pytest.raises(ConfigError, match='divides the patch size'):
    models.ModelConfig(image_shape=(32, 32, 1), blocks=(32,), inpaint=5)
  with pytest.raises(ConfigError, match='at least 2'):
    models.ModelConfig(image_shape=(32, 32, 1), blocks=(32,), inpaint=1)
  with pytest.raises(ConfigError, match="arch='global'"):
    models.ModelConfig(image_shape=(32, 32, 1), blocks=(32,), arch='spatial', inpaint=4)
  cfg = models.ModelConfig(image_shape=(32, 32, 1), blocks=(32,), inpaint=4)
  settings = evaluate.EvalSettings(scores=('neg_elbo',), map='projection')
  with pytest.raises(ConfigError, match='projection map'):
    evaluate.Scorer(cfg, settings)


def test_training_encoder_never_sees_the_hidden_cells():
  """In training, changing the pixels of the group hidden from each example leaves q(z|·), so
  the KL, unchanged, and changes the likelihood of the whole (clean) patch."""
  from vae_qc import train as train_lib  # pylint: disable=g-import-not-at-top
  cfg = models.ModelConfig(image_shape=(8, 8, 1), blocks=(4,), fc=8, latent=2, sigma=SIGMA,
                           inpaint=4)
  variables = models.init(cfg, jax.random.key(0))
  rng = np.random.default_rng(2)
  x = rng.uniform(size=(6, 8, 8, 1)).astype(np.float32)
  key = jax.random.key(3)
  hidden = np.asarray(inpaint.random_hidden(jax.random.fold_in(key, 1), 6, 8, 8, 4))
  x2 = np.where(hidden[..., None], rng.uniform(size=x.shape), x).astype(np.float32)
  loss = jax.jit(lambda x: train_lib.loss_fn(variables['params'], variables['batch_stats'], cfg,
                                             x, key, 1)[1][1])
  a, b = loss(jnp.asarray(x)), loss(jnp.asarray(x2))
  np.testing.assert_allclose(float(a['kl']), float(b['kl']), rtol=1e-6)
  assert abs(float(a['log_lik']) - float(b['log_lik'])) > 1.0
  # without inpainting the encoder sees them
  plain = dataclasses.replace(cfg, inpaint=0)
  loss0 = jax.jit(lambda x: train_lib.loss_fn(variables['params'], variables['batch_stats'],
                                              plain, x, key, 1)[1][1])
  assert abs(float(loss0(jnp.asarray(x))['kl']) - float(loss0(jnp.asarray(x2))['kl'])) > 1e-4
