"""Two real processes on this machine (loopback coordinator, gloo CPU collectives) train and
score together, and agree with one process holding the same number of devices; a wrong
coordinator is a clear error within seconds, not a hang; SIGTERM to one of them makes both
checkpoint at one agreed step (JAX's preemption sync point) and exit with status 75.

The workers are this file run as a script (``python tests/multiprocess_test.py worker ...``),
so JAX starts fresh in each with its own device count.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import xla_env

pytestmark = pytest.mark.slow  # fresh JAX processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # a guard against hangs only; the runs take seconds


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(num_devices: int) -> dict[str, str]:
  env = xla_env(num_devices, users_optimisation=True)  # they train across processes
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _spawn(args: list[str], num_devices: int) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], cwd=ROOT,
                          env=_env(num_devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(procs: list[subprocess.Popen]) -> list[str]:
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def test_two_processes_train_and_score_like_one_process(tmp_path):
  port = _free_port()
  multi, single = str(tmp_path / 'multi'), str(tmp_path / 'single')
  procs = [_spawn(['worker', multi, f'127.0.0.1:{port}', '2', str(i)], num_devices=1)
           for i in range(2)]
  procs.append(_spawn(['worker', single, '', '1', '0'], num_devices=2))
  outs = _wait(procs)
  summaries = [json.loads(next(l for l in out.splitlines() if l.startswith('SUMMARY '))[8:])
               for out in outs]
  # Every process sees the global mesh of 2 devices and the same gathered scores.
  assert [s['devices'] for s in summaries] == [2, 2, 2]
  assert [s['processes'] for s in summaries] == [2, 2, 1]
  assert [s['writer'] for s in summaries] == [True, False, True]
  np.testing.assert_allclose(summaries[0]['score_sum'], summaries[1]['score_sum'], rtol=1e-6)

  a, b = np.load(os.path.join(multi, 'out.npz')), np.load(os.path.join(single, 'out.npz'))
  assert sorted(a.files) == sorted(b.files)
  for name in a.files:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)
  # Only process 0 wrote metrics.jsonl: one line per logged step, none duplicated; the second
  # call resumed from the checkpoint of step 8 (orbax, multi-process) and went on to 12.
  for workdir in (multi, single):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      steps = [json.loads(l)['step'] for l in f]
    assert steps == [4, 8, 12], (workdir, steps)
    saved = [int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()]
    assert max(saved) == 12, saved
  losses = [[json.loads(l)['loss'] for l in open(os.path.join(w, 'metrics.jsonl'))]
            for w in (multi, single)]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_sigterm_to_one_process_both_save_at_one_agreed_step(tmp_path):
  port = _free_port()
  workdir, marker = str(tmp_path / 'w'), str(tmp_path / 'paused')
  procs = [_spawn(['preempt', workdir, f'127.0.0.1:{port}', str(i), marker], num_devices=1)
           for i in range(2)]
  try:
    deadline = time.monotonic() + 2 * TIMEOUT_S  # start-up and compiles on a loaded machine
    while not os.path.exists(marker):  # process 1 holds after its step 3
      assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
      assert time.monotonic() < deadline
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 0 gets no signal
    outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [75, 75], [o[-3000:] for o in outs]
  steps = [int(next(l for l in o.splitlines() if l.startswith('PREEMPTED '))[10:]) for o in outs]
  assert steps[0] == steps[1] and 3 < steps[0] < 16, steps  # one step, agreed by both
  saved = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  assert saved == [steps[0]]  # checkpoints are otherwise only every 100 steps
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert json.loads(f.readlines()[-1])['step'] == steps[0]


def test_unreachable_coordinator_is_a_clear_error_not_a_hang(tmp_path):
  """The real entry point, as process 1 of 2 whose coordinator does not exist."""
  port = _free_port()  # nobody listens there
  cmd = [sys.executable, 'experiments/mnist_anomaly.py', '--config=experiments/configs/mnist.py',
         f'--workdir={tmp_path / "w"}', f'--config.parallel.coordinator_address=127.0.0.1:{port}',
         '--config.parallel.num_processes=2', '--config.parallel.process_id=1',
         '--config.parallel.timeout_s=2']
  result = subprocess.run(cmd, cwd=ROOT, env=_env(1), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
  assert result.returncode == 2, result.stderr[-3000:]
  assert f'cannot reach the coordinator (process 0) at 127.0.0.1:{port} within 2 s' in \
      result.stderr
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


# ----------------------------------------------------------------------------------- worker
def _worker(workdir: str, address: str, num_processes: str, process_id: str) -> None:
  """Trains 8 steps (checkpoint at 4 and 8), then resumes to 12, then scores 20 images."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from vae_qc import evaluate  # pylint: disable=g-import-not-at-top
  from vae_qc import parallel  # pylint: disable=g-import-not-at-top
  from vae_qc import train  # pylint: disable=g-import-not-at-top

  par_cfg = ml_collections.ConfigDict(dict(parallel.DEFAULTS))
  par_cfg.coordinator_address = address
  par_cfg.num_processes = int(num_processes)
  par_cfg.process_id = int(process_id)
  par_cfg.timeout_s = 60
  par = parallel.setup(ml_collections.ConfigDict({'parallel': par_cfg}))

  rng = np.random.default_rng(0)
  images = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)
  images *= np.linspace(0.2, 1.0, 64, dtype=np.float32)[:, None, None, None]
  test_images = rng.uniform(size=(20, 8, 8, 1)).astype(np.float32)
  config = ml_collections.ConfigDict({
      'seed': 0,
      'model': {'blocks': (4,), 'fc': 8, 'latent': 2, 'norm': 'batch',
                'likelihood': 'gaussian_fixed', 'sigma': 0.7071},
      'train': {'epochs': 2, 'batch_size': 16, 'learning_rate': 1e-3, 'num_samples': 1,
                'log_every_steps': 4, 'checkpoint_every_steps': 4, 'max_checkpoints': 2,
                'nan_policy': 'stop'},
  })
  model_cfg = train.model_config(config, images.shape[1:])
  par.check_batch_size(config.train.batch_size)
  train.prepare_workdir(workdir, config, is_writer=par.is_writer)

  def run():
    step_fn = train.compile_train_step(model_cfg, train.make_optimizer(config.train),
                                       shardings=par.train_step_shardings)
    return train.train(config, workdir, images, model_cfg, step_fn=step_fn,
                       put_batch=par.put_batch, put_state=par.replicate,
                       is_writer=par.is_writer)

  run()
  config.train.epochs = 3  # resume from step 8's checkpoint, on to step 12
  state = run()
  variables = par.to_host(state.variables)
  settings = evaluate.EvalSettings(scores=('neg_elbo', 'neg_log_px', 'recon_error', 'kl'),
                                   elbo_samples=4, log_px_samples=6, chunk_size=4,
                                   map_samples=2, batch_size=6, seed=0)
  scorer = evaluate.Scorer(model_cfg, settings, parallel=par)
  values = scorer.scores(variables, test_images)
  maps = scorer.maps(variables, test_images[:5])
  if par.is_writer:
    flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(variables)}
    flat.update({f'score/{k}': v for k, v in values.items()})
    flat.update({f'map/{k}': v for k, v in maps.items()})
    np.savez(os.path.join(workdir, 'out.npz'), **flat)
  print('SUMMARY ' + json.dumps(dict(
      devices=par.num_devices, processes=par.process_count, writer=par.is_writer,
      step=int(state.step), score_sum=float(sum(np.sum(v) for v in values.values())))),
        flush=True)


def _preempt_worker(workdir: str, address: str, process_id: str, marker: str) -> None:
  """Trains 16 steps on 2 processes; process 1 writes ``marker`` after step 3 and waits until
  the preemption notice (the test's SIGTERM) reached the coordination service."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from vae_qc import parallel  # pylint: disable=g-import-not-at-top
  from vae_qc import train  # pylint: disable=g-import-not-at-top
  from vae_qc.errors import Preempted  # pylint: disable=g-import-not-at-top

  par_cfg = ml_collections.ConfigDict(dict(parallel.DEFAULTS))
  par_cfg.update(coordinator_address=address, num_processes=2, process_id=int(process_id))
  par = parallel.setup(ml_collections.ConfigDict({'parallel': par_cfg}))
  images = np.random.default_rng(0).uniform(size=(64, 8, 8, 1)).astype(np.float32)
  config = ml_collections.ConfigDict({
      'seed': 0,
      'model': {'blocks': (4,), 'fc': 8, 'latent': 2, 'norm': 'batch',
                'likelihood': 'gaussian_fixed', 'sigma': 0.7071},
      'train': {'epochs': 4, 'batch_size': 16, 'learning_rate': 1e-3, 'num_samples': 1,
                'log_every_steps': 4, 'checkpoint_every_steps': 100, 'max_checkpoints': 2,
                'nan_policy': 'stop'},
  })
  model_cfg = train.model_config(config, images.shape[1:])
  train.prepare_workdir(workdir, config, is_writer=par.is_writer)
  step_fn = train.compile_train_step(model_cfg, train.make_optimizer(config.train),
                                     shardings=par.train_step_shardings)

  def step_then_hold(state, x, key):
    out = step_fn(state, x, key)
    if par.process_index == 1 and int(out[0].step) == 3:
      with open(marker + '.part', 'w') as f:
        f.write('3')
      os.replace(marker + '.part', marker)
      from jax._src import distributed  # pylint: disable=g-import-not-at-top
      deadline = time.monotonic() + 60
      while time.monotonic() < deadline:
        try:
          distributed.global_state.client.key_value_try_get('RECEIVED_PREEMPTION_NOTICE')
          break
        except Exception:  # pylint: disable=broad-except  # not there yet
          time.sleep(0.05)
    return out
  try:
    train.train(config, workdir, images, model_cfg, step_fn=step_then_hold,
                put_batch=par.put_batch, put_state=par.replicate, is_writer=par.is_writer)
  except Preempted as e:
    print(f'PREEMPTED {str(e).split(" at step ")[1].split("/")[0]}', flush=True)
    sys.exit(75)
  print('FINISHED without preemption', flush=True)


if __name__ == '__main__':
  if len(sys.argv) == 6 and sys.argv[1] == 'worker':
    _worker(*sys.argv[2:])
  elif len(sys.argv) == 6 and sys.argv[1] == 'preempt':
    _preempt_worker(*sys.argv[2:])
  else:
    sys.exit(f'usage: {sys.argv[0]} worker WORKDIR ADDRESS NUM_PROCESSES PROCESS_ID')
