"""Preemption (SIGTERM), resumable scoring and the one-writer lock, on real subprocesses.

The slow test runs the tiny MNIST study of ``tests/kill_resume_test.py`` (same arguments, same
compilation cache) four times into one workdir and compares the end with the uninterrupted
reference run of ``tests/conftest.py``:

  1. paused after training step 7 (a hook); meanwhile a second run on the same workdir (other
     settings) must fail at once naming the first; then SIGTERM: the run checkpoints step 7,
     writes the metrics line of step 7 and exits with status 75;
  2. resumed, it finishes training and is paused after storing its first scored batch; SIGTERM:
     exit 75, the batch is in ``scores_cache/``, no results yet;
  3. resumed, it reuses that batch, stores the second one and is killed there (SIGKILL);
  4. the plain re-run reuses both batches (computes neither again) and finishes.

The final parameters are bitwise those of the reference, results.json is the same but for its
timing fields, scores.csv is byte-identical. As in kill_resume_test, the runs are this module
run as a script with a hook (``VAE_QC_PAUSE_AT``) that writes a marker file at an exact point
and waits for the signal, so nothing depends on timing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import kill_resume_test as krt
from vae_qc import score_cache
from vae_qc import train as train_lib
from vae_qc import workdir as wd
from vae_qc.errors import Preempted, PREEMPTED_EXIT_STATUS, VaeQcError

ROOT = krt.ROOT


# ------------------------------------------------------------------------------ fast tests
def test_parse_signals():
  assert train_lib.parse_signals('TERM, usr1') == [signal.SIGTERM, signal.SIGUSR1]
  assert train_lib.parse_signals('SIGUSR2') == [signal.SIGUSR2]
  assert train_lib.parse_signals('') == []
  for bad in ('TERMINATE', 'KILL'):
    with pytest.raises(VaeQcError, match='preemption_signals'):
      train_lib.parse_signals(bad)


def test_signal_in_process_stops_training_at_the_next_step(tmp_path, tiny_images):
  from tests.conftest import tiny_model_config  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_train_config  # pylint: disable=g-import-not-at-top
  config = tiny_train_config(epochs=2)  # 8 steps, checkpoints every 3
  model_cfg = tiny_model_config()
  step_fn = train_lib.compile_train_step(model_cfg, train_lib.make_optimizer(config.train))

  def step_then_signal(state, x, key):
    if int(state.step) == 4:  # the signal comes during the 5th step
      signal.raise_signal(signal.SIGUSR1)
    return step_fn(state, x, key)
  with train_lib.preemption_signals('USR1'):
    with pytest.raises(Preempted, match='SIGUSR1 at step 5/8'):
      train_lib.train(config, str(tmp_path), tiny_images, model_cfg, step_fn=step_then_signal)
  assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the handler was restored
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '5']
  assert [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')] == [2, 4, 5]
  state = train_lib.train(config, str(tmp_path), tiny_images, model_cfg, step_fn=step_fn)
  assert int(state.step) == 8
  assert [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')] == [2, 4, 5, 6, 8]


_HOLD_LOCK = '''
import sys, time
from vae_qc import workdir
workdir.lock(sys.argv[1])
print('locked', flush=True)
time.sleep(600)
'''


def test_lock_names_the_holder_and_dies_with_it(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  p = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, str(tmp_path)], env=env,
                       stdout=subprocess.PIPE, text=True)
  try:
    assert p.stdout.readline().strip() == 'locked'
    with pytest.raises(wd.WorkdirInUse) as e:
      wd.lock(str(tmp_path))
    message = str(e.value)
    assert f'workdir {tmp_path} is in use by process {p.pid} on ' in message
    assert '-c' in message and '\n' not in message
  finally:
    p.kill()  # kill -9: the OS drops the lock, nothing stale stays behind
    p.wait()
  assert wd.lock(str(tmp_path)) == str(tmp_path / 'lock')
  assert wd.lock(str(tmp_path)) == str(tmp_path / 'lock')  # re-entrant in one process
  assert json.loads((tmp_path / 'lock').read_text())['pid'] == os.getpid()
  wd.unlock(str(tmp_path))


def test_score_cache_reuses_batches_and_starts_afresh_when_settings_change(tmp_path, caplog):
  import dataclasses  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from tests.conftest import tiny_model_config  # pylint: disable=g-import-not-at-top
  from vae_qc import evaluate  # pylint: disable=g-import-not-at-top
  from vae_qc import models  # pylint: disable=g-import-not-at-top
  model_cfg = tiny_model_config()
  variables = jax.device_get(models.init(model_cfg, jax.random.key(0)))
  images = np.random.default_rng(0).uniform(size=(10, 8, 8, 1)).astype(np.float32)
  dataset = types.SimpleNamespace(test_images=images, test_labels=np.zeros(10, np.int32))
  config = ml_collections.ConfigDict({'eval': {'cache_scores': True}})
  settings = evaluate.EvalSettings(scores=('neg_elbo',), elbo_samples=2, batch_size=4)

  def score(s):
    scorer = evaluate.Scorer(model_cfg, s)
    cache = score_cache.attach(scorer, str(tmp_path), variables, dataset, config, step=3)
    return scorer.scores(variables, images)['neg_elbo'], cache

  plain = evaluate.Scorer(model_cfg, settings).scores(variables, images)['neg_elbo']
  first, cache = score(settings)
  assert (cache.computed, cache.reused) == (3, 0)  # 10 images in batches of 4
  np.testing.assert_array_equal(first, plain)
  again, cache = score(settings)
  assert (cache.computed, cache.reused) == (0, 3)
  np.testing.assert_array_equal(again, plain)
  # a batch that came out NaN (say, before a fix to the model code) is scored again
  name = sorted(n for n in os.listdir(tmp_path / 'scores_cache') if n.endswith('.npz'))[0]
  path = tmp_path / 'scores_cache' / name
  with np.load(path) as f:
    stored = {k: f[k].copy() for k in f.files}
  stored['neg_elbo'][0] = np.nan
  np.savez(path, **stored)
  mended, cache = score(settings)
  assert (cache.computed, cache.reused) == (1, 2)
  np.testing.assert_array_equal(mended, plain)
  caplog.clear()
  with caplog.at_level('INFO'):
    _, cache = score(dataclasses.replace(settings, elbo_samples=3))
  assert (cache.computed, cache.reused) == (3, 0)
  assert 'other settings (eval.elbo_samples): its 3 batches are discarded' in caplog.text
  assert len([n for n in os.listdir(tmp_path / 'scores_cache') if n.endswith('.npz')]) == 3
  # a change to the package's code (its digest) discards the batches too
  ident = json.loads((tmp_path / 'scores_cache' / 'identity.json').read_text())
  assert ident['code_digest'] == score_cache.code_digest()
  ident['code_digest'] = 'an older version'
  (tmp_path / 'scores_cache' / 'identity.json').write_text(json.dumps(ident))
  caplog.clear()
  with caplog.at_level('INFO'):
    _, cache = score(dataclasses.replace(settings, elbo_samples=3))
  assert (cache.computed, cache.reused) == (3, 0)
  assert 'other settings (code_digest): its 3 batches are discarded' in caplog.text


# ------------------------------------------------------------------------------ slow test
def _run_paused(workdir, env, pause, marker, log, send, probe=None, timeout=900):
  """Runs the study with a pause hook at ``pause``, sends ``send`` once it is there (after
  calling ``probe(pid)``, if given); returns the exit status."""
  env = dict(env, VAE_QC_PAUSE_AT=pause, VAE_QC_PAUSE_MARKER=marker)
  with open(log, 'w') as out:
    p = subprocess.Popen([sys.executable, '-m', 'tests.preemption_test',
                          *krt.cli_args(workdir)], cwd=ROOT, env=env, stdout=out,
                         stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
      while not os.path.exists(marker):
        assert p.poll() is None, (f'the run ended (status {p.returncode}) before reaching '
                                  f'{pause!r}:\n{krt._tail(log)}')
        assert time.monotonic() < deadline, f'no {pause!r} within {timeout} s'
        time.sleep(0.05)
      if probe is not None:
        probe(p.pid)
      p.send_signal(send)
      p.wait(timeout=timeout)
    finally:
      if p.poll() is None:
        p.kill()
        p.wait()
  os.remove(marker)
  return p.returncode


def _cache_files(workdir):
  folder = os.path.join(workdir, 'scores_cache')
  return sorted(n for n in os.listdir(folder) if n.endswith('.npz'))


def make_preempted(root: str, cache_dir: str) -> dict:
  env = krt.subprocess_env(cache_dir)
  workdir = os.path.join(root, 'preempted')
  shutil.rmtree(workdir, ignore_errors=True)
  marker = os.path.join(root, 'preempt_paused')
  seen = {}

  def probe(pid):  # a second run on the workdir in use, with other settings
    with open(os.path.join(workdir, 'config.json'), 'rb') as f:
      config_before = f.read()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, 'experiments/mnist_anomaly.py',
                        *krt.cli_args(workdir), '--config.model.latent=3'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    with open(os.path.join(workdir, 'config.json'), 'rb') as f:
      seen['probe'] = dict(rc=r.returncode, stderr=r.stderr.strip().splitlines()[-1:],
                           pid=pid, seconds=time.monotonic() - t0,
                           config_unchanged=f.read() == config_before)

  # 1. SIGTERM after training step 7 (with the second run tried while it is paused).
  rc = _run_paused(workdir, env, 'step:7', marker, os.path.join(root, 'preempt1.log'),
                   signal.SIGTERM, probe)
  seen['run1'] = dict(rc=rc, checkpoints=krt.checkpoint_listing(workdir),
                      steps=krt.metric_steps(workdir),
                      log=krt._tail(os.path.join(root, 'preempt1.log'), 10**5))
  # 2. SIGTERM after the first scored batch is stored.
  rc = _run_paused(workdir, env, 'scored:1', marker, os.path.join(root, 'preempt2.log'),
                   signal.SIGTERM)
  seen['run2'] = dict(rc=rc, checkpoints=krt.checkpoint_listing(workdir),
                      cache=_cache_files(workdir),
                      results=os.path.exists(os.path.join(workdir, 'results.json')))
  # 3. SIGKILL after the second scored batch is stored (the first one is reused).
  rc = _run_paused(workdir, env, 'scored:1', marker, os.path.join(root, 'preempt3.log'),
                   signal.SIGKILL)
  seen['run3'] = dict(rc=rc, cache=_cache_files(workdir),
                      results=os.path.exists(os.path.join(workdir, 'results.json')))
  # 4. The re-run, tracing which batches it reads and computes.
  trace = os.path.join(root, 'preempt_trace.txt')
  log = os.path.join(root, 'preempt4.log')
  with open(log, 'w') as out:
    p = subprocess.run([sys.executable, '-m', 'tests.preemption_test', *krt.cli_args(workdir)],
                       cwd=ROOT, env=dict(env, VAE_QC_SCORE_TRACE=trace), stdout=out,
                       stderr=subprocess.STDOUT, timeout=900)
  assert p.returncode == 0, krt._tail(log)
  with open(trace) as f:
    seen['run4'] = dict(trace=[line.split() for line in f], log=krt._tail(log, 10**5))
  with open(os.path.join(root, 'reference_sources.json')) as f:
    changed = krt.changed_sources(json.load(f), krt.source_hashes())
  return dict(workdir=workdir, seen=seen, changed_sources=changed)


@pytest.fixture(scope='module')
def preempted_run(tmp_path_factory, mnist_reference_run):
  del mnist_reference_run  # made first: it fills the compilation cache
  from tests import conftest  # pylint: disable=g-import-not-at-top
  return conftest._shared_run(tmp_path_factory, 'preempted', make_preempted)  # pylint: disable=protected-access


@pytest.mark.slow
def test_sigterm_mid_training_checkpoints_that_step_and_exits_75(preempted_run):
  run1 = preempted_run['seen']['run1']
  assert run1['rc'] == PREEMPTED_EXIT_STATUS == 75
  assert run1['checkpoints'] == ['4', '7']  # the regular one, and the one at the signal
  assert run1['steps'] == [2, 4, 6, 7]  # the metrics of step 7 were flushed
  assert 'Preempted by SIGTERM: stopped after step 7/12' in run1['log']
  assert 'Re-run the same command to resume' in run1['log']


@pytest.mark.slow
def test_second_run_on_a_workdir_in_use_fails_at_once_and_the_first_is_untouched(
    preempted_run):
  probe = preempted_run['seen']['probe']
  assert probe['rc'] == 2
  assert probe['stderr'][0].startswith(f'error: workdir {preempted_run["workdir"]} is in use by '
                                       f'process {probe["pid"]} on ')
  assert 'mnist_anomaly.py' in probe['stderr'][0]
  assert probe['config_unchanged']  # its other settings did not replace the first's config
  # The first run went on to checkpoint step 7 on SIGTERM as if nothing had happened.
  assert preempted_run['seen']['run1']['checkpoints'] == ['4', '7']


@pytest.mark.slow
def test_sigterm_and_kill_mid_scoring_keep_scored_batches(preempted_run):
  seen = preempted_run['seen']
  assert seen['run2']['rc'] == 75 and not seen['run2']['results']
  assert '12' in seen['run2']['checkpoints']  # training had finished
  assert len(seen['run2']['cache']) == 1 and seen['run2']['cache'][0].startswith('scores-')
  assert seen['run3']['rc'] == -signal.SIGKILL and not seen['run3']['results']
  assert len(seen['run3']['cache']) == 2 and set(seen['run2']['cache']) < set(seen['run3']['cache'])


@pytest.mark.slow
def test_resumed_scoring_reuses_finished_batches_only(preempted_run):
  seen = preempted_run['seen']
  trace = seen['run4']['trace']
  reused = [name for what, name in trace if what == 'reused']
  computed = [name for what, name in trace if what == 'computed']
  # The two test-set batches, read back in scoring order: the one run 2 had scored first.
  # (The cache listings are sorted by name, which is not the scoring order.)
  first = seen['run2']['cache']
  assert reused == first + sorted(set(seen['run3']['cache']) - set(first))
  assert not set(computed) & set(reused)  # nothing scored before was scored again
  assert computed  # the plots' batches
  assert 'Scoring resumes: 2 batches scored before are read from' in seen['run4']['log']
  assert 'step 8/12' not in seen['run4']['log']  # no training


@pytest.mark.slow
def test_preempted_and_resumed_run_equals_uninterrupted(mnist_reference_run, preempted_run):
  from tests.determinism_test import strip_timing  # pylint: disable=g-import-not-at-top
  workdir = preempted_run['workdir']
  with krt.unless_code_changed(preempted_run):
    a = krt._leaves(krt._restore_all(mnist_reference_run)[krt.TOTAL_STEPS])
    b = krt._leaves(krt._restore_all(workdir)[krt.TOTAL_STEPS])
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for name in ('results.json',):
      with open(os.path.join(mnist_reference_run, name)) as f:
        ra = json.load(f)
      with open(os.path.join(workdir, name)) as f:
        rb = json.load(f)
      assert strip_timing(ra) == strip_timing(rb)
    for name in ('scores.csv', 'config.json'):
      with open(os.path.join(mnist_reference_run, name), 'rb') as f:
        fa = f.read()
      with open(os.path.join(workdir, name), 'rb') as f:
        assert f.read() == fa, name
  assert krt.metric_steps(workdir) == [2, 4, 6, 7, 8, 10, 12]


# ------------------------------------------------------------------- the paused run (child)
def _hold(pause: str, marker: str) -> None:
  """Tells the test we are at ``pause``; returns once a preemption signal arrived (the test
  sends SIGTERM) or never (SIGKILL)."""
  with open(marker + '.part', 'w') as f:
    f.write(pause)
  os.replace(marker + '.part', marker)
  deadline = time.monotonic() + 900
  while train_lib.PREEMPTION.signum is None:
    if time.monotonic() > deadline:
      os._exit(3)
    time.sleep(0.01)


def _install_hooks(pause: str, marker: str, trace: str) -> None:
  if trace:
    load, store = score_cache.ScoreCache._load, score_cache.ScoreCache._store

    def traced_load(self, name):
      with open(trace, 'a') as f:
        f.write(f'reused {name}\n')
      return load(self, name)

    def traced_store(self, name, out):
      with open(trace, 'a') as f:
        f.write(f'computed {name}\n')
      return store(self, name, out)
    score_cache.ScoreCache._load, score_cache.ScoreCache._store = traced_load, traced_store
  if not pause:
    return
  kind, _, arg = pause.partition(':')
  if kind == 'step':  # after training step ``arg``
    compile_step = train_lib.compile_train_step

    def compile_paused(*args, **kwargs):
      fn = compile_step(*args, **kwargs)

      def paused(state, x, key):
        out = fn(state, x, key)
        if int(out[0].step) == int(arg):
          _hold(pause, marker)
        return out
      return paused
    train_lib.compile_train_step = compile_paused
  elif kind == 'scored':  # after storing the ``arg``-th batch this run computes
    store = score_cache.ScoreCache._store
    count = [0]

    def store_then_hold(self, name, out):
      store(self, name, out)
      count[0] += 1
      if count[0] == int(arg):
        _hold(pause, marker)
    score_cache.ScoreCache._store = store_then_hold
  else:
    raise ValueError(f'unknown pause point {pause!r}')


if __name__ == '__main__':
  import runpy  # pylint: disable=g-import-not-at-top
  _install_hooks(os.environ.get('VAE_QC_PAUSE_AT', ''), os.environ.get('VAE_QC_PAUSE_MARKER', ''),
                 os.environ.get('VAE_QC_SCORE_TRACE', ''))
  script = os.path.join(ROOT, 'experiments', 'mnist_anomaly.py')
  sys.argv = [script] + sys.argv[1:]
  runpy.run_path(script, run_name='__main__')
