"""The conv VAE: sub-pixel vs plain decoder, shapes of the paper's architectures, batch norm in
train and eval mode, parameter counts against the PyTorch reference."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_qc import models
from vae_qc import ops
from vae_qc.errors import ConfigError, DataError

MNIST = dict(image_shape=(28, 28, 1), blocks=(32, 64), fc=64)
PRINT = dict(image_shape=(224, 224, 1), blocks=(16, 32, 64, 128), fc=128, latent=64)
# Several blocks, colour, a learned per-pixel scale, a non-square image.
SMALL = dict(image_shape=(16, 24, 3), blocks=(4, 8, 6), fc=8, latent=3,
             likelihood='gaussian_learned_pixel')


# JAX's PRNG compiles slowly here (seconds per distinct shape), so test inputs and
# parameters come from numpy; jax.random runs only inside models.init, where it must.
def _normal(seed, shape, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _uniform(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _random_variables(cfg, seed=0):
  """Variables of ``cfg``'s shapes with random values (BN variances positive), no PRNG."""
  shapes = jax.eval_shape(lambda: models.init(cfg, jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    v = rng.normal(size=leaf.shape) * 0.3
    if getattr(path[-1], 'key', None) == 'var':
      v = np.abs(v) + 0.5
    return jnp.asarray(v, leaf.dtype)

  return jax.tree_util.tree_map_with_path(value, shapes)


# Compiled once per config.
_encode = jax.jit(models.encode, static_argnums=0)
_decode = jax.jit(models.decode, static_argnums=0)


def _configs(kwargs):
  return (models.ModelConfig(**kwargs, upsample_impl='subpixel'),
          models.ModelConfig(**kwargs, upsample_impl='plain'))


# ----------------------------------------------------------------------- sub-pixel decoder
@pytest.mark.parametrize('shape', [(2, 5, 5, 3, 4), (3, 4, 7, 8, 1), (1, 1, 1, 2, 2)])
def test_upsample_conv3x3_subpixel_equals_plain(shape):
  n, h, w, i, o = shape
  x, kernel = _normal(0, (n, h, w, i)), _normal(1, (3, 3, i, o))
  plain = ops.upsample_conv3x3(x, kernel, 'plain')
  sub = ops.upsample_conv3x3(x, kernel, 'subpixel')
  assert sub.shape == plain.shape == (n, 2 * h, 2 * w, o)
  np.testing.assert_allclose(sub, plain, rtol=1e-5, atol=1e-5)
  # ... and their gradients (the 3×3 kernel is folded inside the differentiated function).
  loss = lambda impl: lambda x, k: jnp.sum(jnp.sin(ops.upsample_conv3x3(x, k, impl)))
  for g_sub, g_plain in zip(jax.grad(loss('subpixel'), (0, 1))(x, kernel),
                            jax.grad(loss('plain'), (0, 1))(x, kernel)):
    np.testing.assert_allclose(g_sub, g_plain, rtol=1e-4, atol=1e-4)


def test_phase_kernels_fold_the_3x3_taps():
  kernel = _normal(2, (3, 3, 2, 5))
  phases = ops.phase_kernels(kernel)
  assert phases.shape == (2, 2, 2, 2, 2, 5)
  # Every phase sees every tap once: its 2×2 taps sum to the 3×3 kernel's sum.
  np.testing.assert_allclose(phases.sum(axis=(2, 3)),
                             jnp.broadcast_to(kernel.sum(axis=(0, 1)), (2, 2, 2, 5)), rtol=1e-5,
                             atol=1e-5)
  # Phase (1, 1): rows (k0 + k1, k2), columns (k0 + k1, k2).
  np.testing.assert_allclose(phases[1, 1, 1, 1], kernel[2, 2], rtol=1e-6)
  np.testing.assert_allclose(phases[0, 0, 0, 0], kernel[0, 0], rtol=1e-6)
  np.testing.assert_allclose(phases[1, 0, 0, 1], kernel[0:2, 1:3].sum(axis=(0, 1)), rtol=1e-5)


@pytest.mark.parametrize('out', [1, 3, 8])
def test_conv3x3_matches_flax_conv_and_its_gradients(out):
  x, kernel = _normal(3, (3, 6, 10, 5)), _normal(4, (3, 3, 5, out))
  conv = nn.Conv(out, (3, 3), padding='SAME', use_bias=False)
  params = {'params': {'kernel': kernel}}
  np.testing.assert_allclose(ops.conv3x3(x, kernel), conv.apply(params, x), rtol=1e-5,
                             atol=1e-5)
  ours = jax.grad(lambda x, k: jnp.sum(jnp.sin(ops.conv3x3(x, k))), (0, 1))(x, kernel)
  ref = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv.apply({'params': {'kernel': k}}, x))),
                 (0, 1))(x, kernel)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_max_pool_2x2_matches_flax():
  x = _normal(5, (2, 6, 8, 3))
  np.testing.assert_array_equal(ops.max_pool_2x2(x),
                                nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize('kwargs', [dict(MNIST, latent=2), dict(MNIST, latent=32), SMALL],
                         ids=['mnist2', 'mnist32', 'small'])
def test_subpixel_and_plain_models_share_parameters_and_outputs(kwargs):
  sub_cfg, plain_cfg = _configs(kwargs)
  variables = _random_variables(sub_cfg)
  z = _normal(6, (2, 3, sub_cfg.latent))
  out_sub, out_plain = _decode(sub_cfg, variables, z), _decode(plain_cfg, variables, z)
  np.testing.assert_allclose(out_sub.loc, out_plain.loc, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_sub.log_scale, out_plain.log_scale)
  x = _uniform(7, (3,) + sub_cfg.image_shape)
  log_lik = jax.jit(lambda cfg, v, x, z: models.model_fns(cfg, v).log_likelihood(x, z),
                    static_argnums=0)
  np.testing.assert_allclose(log_lik(sub_cfg, variables, x, z),
                             log_lik(plain_cfg, variables, x, z), rtol=1e-5, atol=1e-3)


def test_subpixel_and_plain_models_have_the_same_initial_parameters():
  """Same tree, names, shapes and initial values: checkpoints are interchangeable."""
  sub_cfg, plain_cfg = _configs(dict(image_shape=(8, 8, 3), blocks=(4, 6), fc=8, latent=2,
                                     likelihood='gaussian_learned_pixel'))
  ours, plain = models.init(sub_cfg, jax.random.key(0)), models.init(plain_cfg, jax.random.key(0))
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(plain)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_array_equal(a, b)
  flat = jax.tree_util.tree_flatten_with_path(ours['params'])[0]
  names = {'/'.join(p.key for p in path) for path, _ in flat}
  assert {'decoder/Conv_0/kernel', 'decoder/Conv_1/bias', 'decoder/Conv_2/kernel',
          'encoder/Conv_0/kernel'} <= names  # nn.Conv's names, as before the sub-pixel form


def test_subpixel_and_plain_training_gradients_agree():
  sub_cfg, plain_cfg = _configs(SMALL)
  variables = _random_variables(sub_cfg)
  x = _uniform(8, (4,) + sub_cfg.image_shape)
  noise = _normal(9, (1, 4, sub_cfg.latent))

  def loss(cfg):
    def fn(params):
      (post, out), _ = models.VAE(cfg).apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, x, noise, train=True,
          mutable=['batch_stats'])
      return jnp.sum(jnp.square(out.loc - x)) + jnp.sum(post.mean ** 2)
    return fn

  g_sub = jax.jit(jax.grad(loss(sub_cfg)))(variables['params'])
  g_plain = jax.jit(jax.grad(loss(plain_cfg)))(variables['params'])
  for a, b in zip(jax.tree_util.tree_leaves(g_sub), jax.tree_util.tree_leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unknown_upsample_impl_is_a_config_error():
  with pytest.raises(ConfigError, match='upsample_impl'):
    models.ModelConfig(upsample_impl='transposed')


# ------------------------------------------------------------------ paper's architectures
@pytest.mark.parametrize('latent', [2, 32])
def test_mnist_shapes_and_dtypes(latent):
  cfg = models.ModelConfig(**MNIST, latent=latent)
  variables = _random_variables(cfg)
  x = jnp.zeros((5, 28, 28, 1), jnp.float32)
  posterior = _encode(cfg, variables, x)
  assert posterior.mean.shape == posterior.log_scale.shape == (5, latent)
  assert posterior.mean.dtype == jnp.float32
  out = _decode(cfg, variables, jnp.zeros((3, 5, latent)))  # [K, B, L]
  assert out.loc.shape == (3, 5, 28, 28, 1) and out.loc.dtype == jnp.float32
  assert 0.0 <= float(out.loc.min()) and float(out.loc.max()) <= 1.0  # sigmoid mean
  assert _decode(cfg, variables, jnp.zeros((5, latent))).loc.shape == (5, 28, 28, 1)


def test_print_shapes_and_dtypes():
  cfg = models.ModelConfig(**PRINT)
  variables = _random_variables(cfg)
  posterior = _encode(cfg, variables, jnp.zeros((1, 224, 224, 1)))
  assert posterior.mean.shape == posterior.log_scale.shape == (1, 64)
  out = _decode(cfg, variables, posterior.mean)
  assert out.loc.shape == (1, 224, 224, 1) and out.loc.dtype == jnp.float32


def _torch_reference_params(size, channels, blocks, fc, latent):
  """Parameter count of experiments/torch_reference.py's VAE, by its layers.

  Conv2d k·k·cin·f + f; BatchNorm weight + bias (running stats are buffers); Linear
  in·out + out.
  """
  n, c = 0, channels
  for f in blocks:  # conv 3×3, BN2d
    n += 9 * c * f + f + 2 * f
    c = f
  side = size // 2 ** len(blocks)
  flat = side * side * blocks[-1]
  n += flat * fc + fc + 2 * fc + fc * 2 * latent + 2 * latent  # enc_fc: linear, BN1d, linear
  n += latent * fc + fc + 2 * fc + fc * flat + flat + 2 * flat  # dec_fc: linear, BN, linear, BN
  c = blocks[-1]
  for f in reversed(blocks):  # conv 3×3, BN2d
    n += 9 * c * f + f + 2 * f
    c = f
  return n + 9 * c * channels + channels  # last conv


@pytest.mark.parametrize('kwargs,torch_arch', [
    (dict(MNIST, latent=32), dict(size=28, channels=1, blocks=(32, 64), fc=64, latent=32)),
    (PRINT, dict(size=224, channels=1, blocks=(16, 32, 64, 128), fc=128, latent=64)),
], ids=['mnist', 'print'])
def test_parameter_count_equals_torch_reference(kwargs, torch_arch):
  cfg = models.ModelConfig(**kwargs)
  shapes = jax.eval_shape(lambda k: models.init(cfg, k), jax.random.key(0))
  assert models.num_params(shapes) == _torch_reference_params(**torch_arch)
  if torch_arch['size'] == 28:
    assert models.num_params(shapes) == 492289  # printed by torch_reference.py --arch mnist


# ------------------------------------------------------------------------------ batch norm
def test_batch_norm_train_mode_updates_stats_eval_mode_uses_them():
  cfg = models.ModelConfig(**SMALL)
  variables = _random_variables(cfg)
  x = _uniform(10, (6,) + cfg.image_shape)
  noise = _normal(11, (1, 6, cfg.latent))
  vae = models.VAE(cfg)
  train_apply = jax.jit(lambda v, x, noise: vae.apply(v, x, noise, train=True,
                                                      mutable=['batch_stats']))
  _, updates = train_apply(variables, x, noise)
  old, new = variables['batch_stats'], updates['batch_stats']
  assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(old),
                                                   jax.tree_util.tree_leaves(new))]
  assert all(changed)  # every BN layer's running mean and variance moved
  # Train mode normalises with the batch's own statistics: an image's code depends on the
  # rest of the batch. Eval mode uses the stored statistics: it does not.
  trained = {'params': variables['params'], 'batch_stats': new}
  def mean_of_first(batch, train):
    if train:
      (post, _), _ = train_apply(trained, batch, noise[:, :len(batch)])
    else:
      post = _encode(cfg, trained, batch)
    return post.mean[0]
  alone, in_batch = x[:2], x
  assert not np.allclose(mean_of_first(alone, True), mean_of_first(in_batch, True), atol=1e-4)
  np.testing.assert_allclose(mean_of_first(alone, False), mean_of_first(in_batch, False),
                             rtol=1e-5, atol=1e-5)
  z = _normal(12, (6, cfg.latent))
  np.testing.assert_allclose(_decode(cfg, trained, z[:2]).loc,
                             _decode(cfg, trained, z).loc[:2], rtol=1e-5, atol=1e-5)
  # Eval mode does not touch the statistics.
  # Nothing is mutable in eval mode, nor does it need to be.
  with pytest.raises(flax.errors.ModifyScopeVariableError, match='batch_stats.*immutable'):
    vae.apply(trained, x, noise, train=True)
  _, eval_updates = jax.jit(lambda v: vae.apply(v, x, noise, train=False,
                                                mutable=['batch_stats']))(trained)
  for a, b in zip(jax.tree_util.tree_leaves(eval_updates['batch_stats']),
                  jax.tree_util.tree_leaves(new)):
    np.testing.assert_array_equal(a, b)


def test_spatial_model_scores_any_size_with_one_set_of_parameters():
  cfg = models.ModelConfig(image_shape=(16, 16, 1), blocks=(4, 4), latent=3, arch='spatial',
                           likelihood='gaussian_hetero')
  assert cfg.reduction == 4 and cfg.num_latents == 4 * 4 * 3
  variables = models.init(cfg, jax.random.key(0))
  assert not any('Dense' in k for k in variables['params']['encoder'])
  x = jnp.asarray(np.random.default_rng(0).random((2, 24, 32, 1), np.float32))
  big = cfg.for_shape((24, 32, 1))
  posterior = models.encode(big, variables, x)
  assert posterior.mean.shape == (2, 6 * 8 * 3)
  out = models.decode(big, variables, posterior.mean)
  assert out.loc.shape == (2, 24, 32, 1) and out.log_scale.shape == (2, 24, 32, 1)
  assert float(out.log_scale.min()) >= cfg.min_log_scale
  # fully convolutional: a crop's interior code equals the big image's code there
  crop = models.encode(cfg, variables, x[:, 8:24, 8:24]).mean.reshape(2, 4, 4, 3)
  whole = posterior.mean.reshape(2, 6, 8, 3)
  np.testing.assert_allclose(crop[:, 1:3, 1:3], whole[:, 3:5, 3:5], rtol=1e-4, atol=1e-5)
  with pytest.raises(DataError, match='divisible by 4'):
    cfg.for_shape((18, 16, 1))
  with pytest.raises(DataError, match=r'do not fit the model, which takes \[16, 16, 1\]'):
    models.ModelConfig(image_shape=(16, 16, 1), blocks=(4, 4)).for_shape((32, 32, 1))
  with pytest.raises(ConfigError, match="config.model.arch must be one of"):
    models.ModelConfig(arch='dense')


@pytest.mark.parametrize('arch', ['global', 'spatial'])
def test_posterior_scale_is_bounded_so_unlike_inputs_score_finite(arch):
  """An encoder extrapolates linearly: on an input far from its data its log σ can exceed 88,
  where exp overflows float32. The posterior's log σ is clipped, so the ELBO, log p̂(x) and
  their maps stay finite (and very unlikely) instead of NaN."""
  from vae_qc import estimators  # pylint: disable=g-import-not-at-top
  cfg = models.ModelConfig(image_shape=(8, 8, 1), blocks=(4,), fc=8, latent=2, arch=arch)
  variables = models.init(cfg, jax.random.key(0))
  params = jax.tree_util.tree_map(lambda p: p * 30.0, variables['params'])  # a wild encoder
  wild = {**variables, 'params': params}
  x = jnp.asarray(np.random.default_rng(0).random((3, 8, 8, 1), np.float32))
  posterior = models.encode(cfg, wild, x)
  assert float(jnp.max(posterior.log_scale)) <= models.MAX_POSTERIOR_LOG_SCALE
  assert float(jnp.min(posterior.log_scale)) >= models.MIN_POSTERIOR_LOG_SCALE
  assert float(jnp.max(jnp.abs(posterior.log_scale))) == pytest.approx(
      max(-models.MIN_POSTERIOR_LOG_SCALE, models.MAX_POSTERIOR_LOG_SCALE))  # it did clip
  fns = models.model_fns(cfg, wild)
  got = estimators.estimate(('elbo', 'log_px'), fns.encode, fns.log_likelihood, x,
                            jax.random.key(1), num_samples=4)
  for name, value in got.items():
    assert np.all(np.isfinite(np.asarray(value))), name
  # within the bounds the clip is the identity: a sane encoder is untouched
  tame = models.encode(cfg, variables, x)
  assert float(jnp.max(jnp.abs(tame.log_scale))) < 5.0
