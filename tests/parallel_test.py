"""vae_qc.parallel: the 'data' mesh, sharded train step and scoring, batch-size and
multi-process start-up errors.

The 8-device checks run in a subprocess with ``--xla_force_host_platform_device_count=8`` (this
file run as a script), so the other tests of the pytest process keep one device.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.conftest import xla_env
from vae_qc import evaluate
from vae_qc import models
from vae_qc import parallel
from vae_qc import train
from vae_qc.errors import ConfigError, VaeQcError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = models.ModelConfig(image_shape=(8, 8, 1), blocks=(4,), fc=8, latent=2)
SCORES = ('neg_elbo', 'neg_log_px', 'recon_error', 'kl')


def _images(n: int, seed: int = 0) -> np.ndarray:
  """[n, 8, 8, 1] in [0, 1], brightness rising with the index, so each device's shard of a
  batch has other statistics than the whole batch (a per-shard batch norm would differ)."""
  x = np.random.default_rng(seed).uniform(size=(n, 8, 8, 1)).astype(np.float32)
  return x * np.linspace(0.1, 1.0, n, dtype=np.float32)[:, None, None, None]


def _settings(batch_size: int = 6) -> evaluate.EvalSettings:
  return evaluate.EvalSettings(scores=SCORES, elbo_samples=4, log_px_samples=6, chunk_size=4,
                               map_samples=2, batch_size=batch_size, seed=0)


def _initial_state(optimizer) -> train.TrainState:
  """The initial TrainState of TINY on the host (created once per test: init is slow)."""
  create = jax.jit(train.create_train_state, static_argnums=(0, 1))  # one compile, not ~100
  return jax.device_get(create(TINY, optimizer, jax.random.key(0)))


def _one_step(par: parallel.Parallel, optimizer, x: np.ndarray, initial: train.TrainState):
  state = par.replicate(initial)
  step = train.compile_train_step(TINY, optimizer, shardings=par.train_step_shardings)
  state, metrics = step(state, par.put_batch(x), par.replicate(jax.random.key(1)))
  return par.to_host({'params': state.params, 'batch_stats': state.batch_stats,
                      'metrics': metrics})


def _max_rel_diff(a, b) -> float:
  """max |a − b| / (1 + |b|) over every leaf of two pytrees."""
  diffs = jax.tree_util.tree_map(
      lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)) / (1 + np.abs(v)),
                                initial=0.0)), a, b)
  return max(jax.tree_util.tree_leaves(diffs))


# ------------------------------------------------------------------------- eight devices
@pytest.mark.slow  # a fresh JAX process and ~10 compiles: about a minute on 2 busy cores
def test_eight_devices_match_one_device():
  env = dict(xla_env(8, users_optimisation=True),
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, os.path.abspath(__file__), 'eight_devices'], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads(next(l for l in result.stdout.splitlines()
                           if l.startswith('REPORT '))[len('REPORT '):])
  assert report['num_devices'] == 8
  # One step: the same parameters, batch statistics and metrics on 8 devices as on 1. (SGD:
  # Adam's first update is lr * g / (|g| + eps) ~ lr * sign(g), which turns the float noise of
  # gradients that are exactly zero in theory -- biases feeding a batch norm -- into ±lr.)
  assert report['one_step'] < 1e-5, report
  # Batch norm and the loss are over the GLOBAL batch: a per-device mean would be far off.
  assert report['global_mean'] < 1e-6, report
  assert report['per_shard_mean_differs'] > 1e-2, report
  # Every estimator / score, per image, on 20 images (padded to 24 = 3 x 8): 8 = 1 = none.
  for name in SCORES + ('map/nll', 'map/abs_error', 'map/reconstruction'):
    assert report['scores_8_vs_1'][name] < 1e-5, (name, report)
    assert report['scores_8_vs_plain'][name] < 1e-5, (name, report)
  for name in ('elbo', 'log_px'):
    assert report['estimators_8_vs_1'][name] < 1e-5, (name, report)
  # A global batch that does not split over 8 devices: a clear error naming both numbers.
  for message in report['errors']:
    assert '12' in message and '8' in message and 'multiple of 8' in message, message
  assert len(report['errors']) == 3


def _eight_devices() -> None:
  """Runs in a subprocess with 8 CPU devices; prints ``REPORT {json}``."""
  from vae_qc import estimators  # pylint: disable=g-import-not-at-top
  from vae_qc import study  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  par8, par1 = parallel.Parallel.create(devices), parallel.Parallel.create(devices[:1])
  x = _images(16)
  report: dict = {'num_devices': par8.num_devices}

  sgd = optax.sgd(1e-2)
  initial = _initial_state(sgd)
  report['one_step'] = _max_rel_diff(_one_step(par8, sgd, x, initial),
                                     _one_step(par1, sgd, x, initial))

  mean = par8.jit_batched(lambda _, v, w: jnp.broadcast_to(jnp.mean(v, axis=0), v.shape))
  global_mean = par8.to_host(mean(0.0, *par8.put_batch((x, x))))
  report['global_mean'] = float(np.max(np.abs(global_mean - x.mean(0))))
  report['per_shard_mean_differs'] = float(np.max(np.abs(x[:2].mean(0) - x.mean(0))))

  variables = initial.variables
  test = _images(20, seed=1)
  out = {}
  for key, par in (('8', par8), ('1', par1), ('plain', None)):
    scorer = evaluate.Scorer(TINY, _settings(batch_size=12), parallel=par)
    values = scorer.scores(variables, test)
    values.update({f'map/{k}': v for k, v in scorer.maps(variables, test).items()})
    out[key] = values
  report['scores_8_vs_1'] = {k: _max_rel_diff(out['8'][k], out['1'][k]) for k in out['8']}
  report['scores_8_vs_plain'] = {k: _max_rel_diff(out['8'][k], out['plain'][k]) for k in out['8']}

  keys = jax.random.key_data(evaluate.image_keys(test[:16], 0))
  fns = lambda v: models.model_fns(TINY, v)
  est = {}
  for key, par in (('8', par8), ('1', par1)):
    for name in ('elbo', 'log_px'):
      fn = par.jit_batched(lambda v, xb, kb, name=name: estimators.get(name)(
          fns(v).encode, fns(v).log_likelihood, xb, jax.random.wrap_key_data(kb), 8, 3))
      est[key, name] = par.to_host(fn(par.replicate(variables), *par.put_batch((test[:16], keys))))
  report['estimators_8_vs_1'] = {n: _max_rel_diff(est['8', n], est['1', n])
                                 for n in ('elbo', 'log_px')}

  errors = []
  for attempt in (lambda: par8.check_batch_size(12),
                  lambda: par8.put_batch(np.zeros((12, 8, 8, 1), np.float32))):
    try:
      attempt()
    except ConfigError as e:
      errors.append(str(e))
  import tempfile  # pylint: disable=g-import-not-at-top

  from experiments.configs import mnist  # pylint: disable=g-import-not-at-top
  config = mnist.get_config()
  config.train.batch_size = 12
  with tempfile.TemporaryDirectory() as workdir:
    try:
      study.train_and_evaluate(config, workdir, parallel=par8)
    except ConfigError as e:
      errors.append(str(e))
      assert not os.listdir(workdir), os.listdir(workdir)  # failed before anything was written
  report['errors'] = errors
  print('REPORT ' + json.dumps(report), flush=True)


def test_indivisible_batch_is_a_clear_error():
  """Fast (no compile): 8 fake devices, a global batch of 12."""
  code = ('import numpy as np\n'
          'from vae_qc import parallel\n'
          'par = parallel.Parallel.create()\n'
          'for f in (lambda: par.check_batch_size(12),\n'
          '          lambda: par.put_batch(np.zeros((12, 2), np.float32))):\n'
          '  try:\n'
          '    f()\n'
          '  except parallel.ConfigError as e:\n'
          '    print("ERROR", e)\n')
  env = dict(xla_env(8, users_optimisation=True),
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  errors = [l for l in result.stdout.splitlines() if l.startswith('ERROR ')]
  assert len(errors) == 2, result.stdout + result.stderr[-3000:]
  assert errors[0] == (
      'ERROR config.train.batch_size=12 is not divisible by the number of devices (8): the '
      'global batch is split evenly over the devices. Set config.train.batch_size to a multiple '
      'of 8 (e.g. 8 or 16), or run on a device count that divides 12 (on one machine: '
      'CUDA_VISIBLE_DEVICES, or config.parallel.num_devices).')
  assert 'the batch size=12 is not divisible by the number of devices (8)' in errors[1]


# ---------------------------------------------------------------------------- one device
def test_put_batch_replicate_and_to_host_round_trip():
  par = parallel.Parallel.create()
  assert par.num_devices == jax.device_count() == 1
  assert par.is_writer and par.process_count == 1
  np.testing.assert_array_equal(par.local_rows(4), np.arange(4))
  batch = {'x': _images(4), 'k': np.arange(8, dtype=np.uint32).reshape(4, 2)}
  placed = par.put_batch(batch)
  assert placed['x'].sharding == par.batch_sharding
  back = par.to_host(placed)
  np.testing.assert_array_equal(back['x'], batch['x'])
  np.testing.assert_array_equal(back['k'], batch['k'])
  local = par.to_host(par.put_local_batch(batch))  # one process: its rows are all rows
  np.testing.assert_array_equal(local['x'], batch['x'])
  with pytest.raises(VaeQcError, match='got 4 rows of a global batch of 8'):
    par.put_local_batch(batch, global_size=8)
  tree = par.replicate({'w': np.ones(3, np.float32), 'key': jax.random.key(0)})
  assert tree['w'].sharding == par.replicated
  assert par.padded_batch_size(5) == 5
  with pytest.raises(VaeQcError, match='leading size'):
    par.put_batch({'a': np.zeros(3), 'b': np.zeros(4)})


# ---------------------------------------------------------------------- start-up and config
def _cfg(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(parallel.DEFAULTS, **fields))


def test_single_process_needs_no_distributed_start(monkeypatch):
  for var in ('SLURM_STEP_NUM_TASKS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize(None) is False
  assert parallel.initialize(_cfg()) is False
  monkeypatch.setenv('SLURM_NTASKS', '1')  # a one-task SLURM job (e.g. a sweep array task)
  assert parallel.initialize(_cfg()) is False
  monkeypatch.setenv('SLURM_NTASKS', '4')
  assert parallel.initialize(_cfg(distributed='off')) is False


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_unreachable_coordinator_fails_within_the_timeout():
  address = f'127.0.0.1:{_free_port()}'  # nobody listens there
  with pytest.raises(parallel.DistributedError,
                     match=f'cannot reach the coordinator \\(process 0\\) at {address} within 1 s'):
    parallel.initialize(_cfg(coordinator_address=address, num_processes=2, process_id=1,
                             timeout_s=1))
  assert not parallel.is_initialized()


def test_coordinator_port_in_use_is_a_clear_error():
  with socket.socket() as busy:
    busy.bind(('', 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    with pytest.raises(parallel.DistributedError, match=f'cannot listen on port {port}'):
      parallel.initialize(_cfg(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                               process_id=0))
  assert not parallel.is_initialized()


@pytest.mark.parametrize('fields, match', [
    (dict(distributed='yes'), "must be 'auto', 'on' or 'off'"),
    (dict(timeout_s=0), 'timeout_s must be > 0'),
    (dict(coordinator_address='nohostport', num_processes=2, process_id=1), 'host:port'),
    (dict(coordinator_address='127.0.0.1:1', num_processes=2, process_id=2),
     r'process_id=2 must be in \[0, num_processes=2\)'),
])
def test_bad_parallel_config(fields, match):
  with pytest.raises(ConfigError, match=match):
    parallel.initialize(_cfg(**fields))


def test_unknown_parallel_field_lists_the_valid_ones():
  cfg = _cfg()
  cfg.coordinater = 'x'
  with pytest.raises(ConfigError, match='coordinater.*valid:.*coordinator_address'):
    parallel.setup(ml_collections.ConfigDict({'parallel': cfg}))


def test_num_devices_beyond_the_visible_ones():
  with pytest.raises(ConfigError, match='num_devices=3 but only 1 device'):
    parallel.setup(ml_collections.ConfigDict({'parallel': _cfg(num_devices=3)}))


if __name__ == '__main__':
  if sys.argv[1:] == ['eight_devices']:
    _eight_devices()
  else:
    sys.exit(f'usage: {sys.argv[0]} eight_devices')
