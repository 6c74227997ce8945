"""Training step, loop, checkpoints and resumption on a tiny model."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import tiny_model_config
from tests.conftest import tiny_train_config as _config
from vae_qc import models
from vae_qc import train as train_lib
from vae_qc.errors import ConfigError, TrainingError

TINY = tiny_model_config()


def test_train_step_compiles_once_and_learns(tiny_images):
  optimizer = train_lib.make_optimizer(_config().train)
  state = train_lib.create_train_state(TINY, optimizer, jax.random.key(0))
  step = train_lib.compile_train_step(TINY, optimizer)
  key = jax.random.key(1)
  losses = []
  for i in range(12):
    state, metrics = step(state, jnp.asarray(tiny_images[(i % 4) * 16:(i % 4 + 1) * 16]), key)
    losses.append(float(metrics['loss']))
  assert step._cache_size() == 1  # traced and compiled once, not per step
  assert int(state.step) == 12 and int(state.num_skipped) == 0
  assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_batch_norm_stats_update_in_train_mode_only(tiny_images):
  optimizer = train_lib.make_optimizer(_config().train)
  state = train_lib.create_train_state(TINY, optimizer, jax.random.key(0))
  before = jax.tree_util.tree_map(np.asarray, state.batch_stats)
  step = train_lib.compile_train_step(TINY, optimizer)
  state, _ = step(state, jnp.asarray(tiny_images[:16]), jax.random.key(1))
  after = jax.tree_util.tree_map(np.asarray, state.batch_stats)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                   jax.tree_util.tree_leaves(after)))
  # Eval mode: an image's posterior does not depend on the rest of the batch.
  x = jnp.asarray(tiny_images[:8])
  full = models.encode(TINY, state.variables, x).mean
  single = models.encode(TINY, state.variables, x[:1]).mean
  np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-6)


def test_nonfinite_update_is_skipped_and_counted(tiny_images):
  optimizer = train_lib.make_optimizer(_config().train)
  state = train_lib.create_train_state(TINY, optimizer, jax.random.key(0))
  step = train_lib.compile_train_step(TINY, optimizer)
  good = jax.tree_util.tree_map(np.asarray, state.params)
  bad = tiny_images[:16].copy()
  bad[3, 2, 2, 0] = np.nan
  state, _ = step(state, jnp.asarray(bad), jax.random.key(1))
  assert int(state.num_skipped) == 1 and int(state.first_bad_step) == 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, good,
                         jax.tree_util.tree_map(np.asarray, state.params))


def test_batches_resume_exactly(tiny_images):
  full = list(train_lib.batches(tiny_images, 16, seed=3, start_step=0, num_steps=10))
  resumed = list(train_lib.batches(tiny_images, 16, seed=3, start_step=6, num_steps=10))
  assert len(full) == 10 and len(resumed) == 4
  for a, b in zip(full[6:], resumed):
    np.testing.assert_array_equal(a, b)


def test_train_resume_equals_uninterrupted(tmp_path, tiny_images):
  config = _config()
  ref = train_lib.train(config, str(tmp_path / 'a'), tiny_images, TINY)
  # Interrupted run: 1 epoch, then the same command with 2 epochs resumes from step 4.
  short = _config(epochs=1)
  train_lib.train(short, str(tmp_path / 'b'), tiny_images, TINY)
  resumed = train_lib.train(config, str(tmp_path / 'b'), tiny_images, TINY)
  assert int(resumed.step) == int(ref.step) == 8
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         jax.tree_util.tree_map(np.asarray, ref.params),
                         jax.tree_util.tree_map(np.asarray, resumed.params))
  steps = [json.loads(l)['step'] for l in open(tmp_path / 'b' / 'metrics.jsonl')]
  assert steps == sorted(set(steps)) and steps[-1] == 8
  for key in ('loss', 'elbo', 'kl', 'img_per_s', 'eta_s'):
    assert key in json.loads(open(tmp_path / 'a' / 'metrics.jsonl').readline())


def test_nan_policy_stop_names_step_and_checkpoint(tmp_path, tiny_images):
  images = tiny_images.copy()
  images[:, 0, 0, 0] = np.nan
  with pytest.raises(TrainingError,
                     match=r'non-finite loss or gradient at step 0.*last good checkpoint'):
    train_lib.train(_config(), str(tmp_path), images, TINY)


def test_length_is_set_by_steps_or_by_epochs_never_both():
  assert train_lib.num_steps(_config(epochs=3).train, 70) == 12  # 4 whole batches × 3 epochs
  fixed = _config(epochs=0, steps=500).train
  assert train_lib.num_steps(fixed, 70) == train_lib.num_steps(fixed, 7000) == 500
  with pytest.raises(ConfigError, match=r'steps=500 and config.train.epochs=3 both set .* '
                     r'--config.train.steps=0 --config.train.epochs=3'):
    train_lib.num_steps(_config(epochs=3, steps=500).train, 70)
  with pytest.raises(ConfigError, match=r'must be >= 0, got steps=-1'):
    train_lib.num_steps(_config(epochs=0, steps=-1).train, 70)
  # a background model with its own epochs leaves the main model's steps
  from vae_qc import aux  # pylint: disable=g-import-not-at-top
  config = _config(epochs=0, steps=500)
  config.background.epochs = 4
  bg = aux.background_config(config)
  assert train_lib.num_steps(bg.train, 70) == 16 and config.train.steps == 500


def test_cosine_schedule_decays_to_zero_and_keeps_the_state_structure():
  tc = _config(lr_schedule='cosine', learning_rate=0.01).train
  optimizer = train_lib.make_optimizer(tc, total_steps=4)
  params = {'w': jnp.ones(3)}
  state = optimizer.init(params)
  sizes = []
  for _ in range(5):  # Adam's first step moves each weight by the rate (|update| = lr)
    updates, state = optimizer.update({'w': jnp.ones(3)}, state, params)
    sizes.append(float(jnp.abs(updates['w'][0])))
  np.testing.assert_allclose(sizes, 0.01 * 0.5 * (1 + np.cos(np.pi * np.arange(5).clip(0, 4) / 4)),
                             rtol=1e-3, atol=1e-7)
  # A caller that only restores (no step count) builds the same state tree.
  restoring = train_lib.make_optimizer(tc).init(params)
  assert (jax.tree_util.tree_structure(restoring)
          == jax.tree_util.tree_structure(optimizer.init(params)))
  with pytest.raises(ConfigError, match=r"lr_schedule must be one of constant, cosine"):
    train_lib.make_optimizer(_config(lr_schedule='linear').train)


def test_a_replanned_cosine_is_continuous_and_ends_at_zero_at_its_last_end():
  lr = 0.01
  plain = train_lib.replanned_cosine(lr, [(0, 40)])
  reference = optax.cosine_decay_schedule(lr, 40)
  steps = np.arange(45)
  np.testing.assert_allclose(jax.vmap(plain)(steps), jax.vmap(reference)(steps), rtol=1e-6,
                             atol=1e-9)
  # The end moved to 24 at step 10, then to 20 at step 16: a float64 reference of the progress.
  sched = train_lib.replanned_cosine(lr, [(0, 40), (10, 24), (16, 20)])
  p10 = 10 / 40
  p16 = p10 + (1 - p10) * 6 / 14
  progress = np.where(steps < 10, steps / 40,
                      np.where(steps < 16, p10 + (1 - p10) * (steps - 10) / 14,
                               p16 + (1 - p16) * (steps - 16) / 4))
  expected = lr * 0.5 * (1 + np.cos(np.pi * progress.clip(0, 1)))
  got = np.asarray(jax.vmap(sched)(steps))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
  assert got[20] == 0 and got[44] == 0 and got[9] > got[10] > got[11]  # continuous, falling
  with pytest.raises(ValueError, match='rising steps'):
    train_lib.replanned_cosine(lr, [(0, 40), (10, 8)])
  # make_optimizer takes it for the cosine; one piece is the plain cosine
  tc = _config(lr_schedule='cosine', learning_rate=lr).train
  params = {'w': jnp.ones(3)}
  opt = train_lib.make_optimizer(tc, 20, [(0, 40), (10, 24), (16, 20)])
  state = opt.init(params)
  sizes = []
  for _ in range(21):
    updates, state = opt.update({'w': jnp.ones(3)}, state, params)
    sizes.append(float(jnp.abs(updates['w'][0])))
  np.testing.assert_allclose(sizes, expected[:21], rtol=1e-3, atol=1e-7)


def test_a_run_paused_at_a_step_resumes_as_if_it_had_not_paused(tmp_path, tiny_images):
  config = _config()
  ref = train_lib.train(config, str(tmp_path / 'a'), tiny_images, TINY)
  marks = []
  # logs every 2 steps, checkpoints every 3: the pause at 5 writes both itself
  paused = train_lib.train(config, str(tmp_path / 'b'), tiny_images, TINY, stop_at=5,
                           on_log=lambda step, now: marks.append(step))
  assert int(paused.step) == 5 and marks == [2, 4, 5]
  resumed = train_lib.train(config, str(tmp_path / 'b'), tiny_images, TINY, stop_at=100)
  assert int(resumed.step) == int(ref.step) == 8
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         jax.tree_util.tree_map(np.asarray, ref.params),
                         jax.tree_util.tree_map(np.asarray, resumed.params))
