"""Kill -9 and resume: a killed MNIST run, re-run with the same command, ends where an
uninterrupted run with the same seed ends: the same parameters (bitwise, on CPU), the same
metrics.jsonl (no duplicated or torn lines) and only restorable checkpoints.

The runs are subprocesses of ``experiments/mnist_anomaly.py`` on the bundled MNIST subset with
a tiny model: 256 training images, batches of 64, 3 epochs = 12 steps, a log line every 2
steps, a checkpoint every 4. They are made by two session fixtures of ``tests/conftest.py``
(``mnist_reference_run``, ``mnist_resumed_run``), which ``tests/determinism_test.py`` shares.

The killed runs are this module run as a script (``python -m tests.kill_resume_test ARGS``):
the same ``experiments/mnist_anomaly.py`` with the same arguments, plus a hook that, at one
point (after a metrics line, inside a checkpoint save just before orbax commits it, or at
the start of scoring), writes a marker file and waits; the test then sends SIGKILL. So the
kill points are exact, not timing-dependent. The re-runs are the plain script.

Kills, in order (each re-run resumes from the last complete checkpoint):
  1. after the metrics line of step 6 (checkpoint 4 exists; line 6 must be dropped), then a
     torn half line is appended to metrics.jsonl (a write cut by a crash);
  2. inside the save of checkpoint 8, before the rename that commits it (orbax writes
     ``8.orbax-checkpoint-tmp`` and renames it to ``8``); the run must resume from 4;
  3. at the start of scoring, after training finished (checkpoint 12 exists; no results yet);
     the re-run must not train again, only score.
Before the final re-run a stray ``99.orbax-checkpoint-tmp`` (a save killed at a step that is
never saved again) is planted; the manager must delete it.

Compilation: the subprocesses share a persistent JAX compilation cache (a temporary folder),
which halves their CPU time. The reference run compiles fresh and fills it; the killed runs
load the same executables, so equality is about the state that survives a kill, which is
what this test is for. If source files change while the runs are made (someone editing the
checkout during the tests), a failed comparison says so rather than blaming resumption.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import jax_cache_env

pytestmark = pytest.mark.slow  # trains and kills tiny MNIST studies in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 12
LOG_EVERY = 2
CHECKPOINT_EVERY = 4
TIMING_KEYS = ('img_per_s', 'eta_s')  # metrics.jsonl fields that measure the machine
TMP_SUFFIX = '.orbax-checkpoint-tmp'


def overrides() -> dict:
  from tests.conftest import tiny_mnist_overrides  # pylint: disable=g-import-not-at-top
  return dict(tiny_mnist_overrides(), **{
      'data.source': 'bundled', 'data.anomalous_digit': 0, 'train.epochs': 3,
      'train.log_every_steps': LOG_EVERY, 'train.checkpoint_every_steps': CHECKPOINT_EVERY,
      'train.max_checkpoints': 2})


def cli_args(workdir: str) -> list[str]:
  def fmt(v):
    return repr(v) if isinstance(v, tuple) else str(v)
  return (['--config=experiments/configs/mnist.py', f'--workdir={workdir}'] +
          [f'--config.{k}={fmt(v)}' for k, v in overrides().items()])


def subprocess_env(cache_dir: str) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT,
              **jax_cache_env(cache_dir))


def _tail(path: str, n: int = 3000) -> str:
  with open(path, errors='replace') as f:
    return f.read()[-n:]


def run_study(workdir: str, env: dict, log: str, timeout: float = 900) -> None:
  """The plain script, to the end; asserts exit status 0."""
  with open(log, 'w') as out:
    p = subprocess.run([sys.executable, 'experiments/mnist_anomaly.py', *cli_args(workdir)],
                       cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
  assert p.returncode == 0, _tail(log)


def run_and_kill(workdir: str, env: dict, pause: str, marker: str, log: str,
                 timeout: float = 900) -> None:
  """Runs the study with a pause hook at ``pause``; SIGKILLs it once it is there."""
  env = dict(env, VAE_QC_PAUSE_AT=pause, VAE_QC_PAUSE_MARKER=marker)
  with open(log, 'w') as out:
    p = subprocess.Popen([sys.executable, '-m', 'tests.kill_resume_test', *cli_args(workdir)],
                         cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
      while not os.path.exists(marker):
        assert p.poll() is None, (f'the run ended (status {p.returncode}) before reaching '
                                  f'{pause!r}:\n{_tail(log)}')
        assert time.monotonic() < deadline, f'no {pause!r} within {timeout} s:\n{_tail(log)}'
        time.sleep(0.05)
      p.send_signal(signal.SIGKILL)
    finally:
      if p.poll() is None:
        p.kill()
      p.wait()
  assert p.returncode == -signal.SIGKILL, p.returncode
  os.remove(marker)


def checkpoint_listing(workdir: str) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def metric_steps(workdir: str) -> list[int]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f]


def source_hashes() -> dict[str, str]:
  """{path: sha256} of the code the runs execute (vae_qc/, experiments/)."""
  out = {}
  for top in ('vae_qc', 'experiments'):
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      for name in sorted(files):
        if name.endswith('.py'):
          path = os.path.join(folder, name)
          with open(path, 'rb') as f:
            out[os.path.relpath(path, ROOT)] = hashlib.sha256(f.read()).hexdigest()
  return out


def changed_sources(before: dict[str, str], after: dict[str, str]) -> list[str]:
  return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


def make_reference(root: str, cache_dir: str) -> str:
  """The uninterrupted run in ``root``/reference; returns its workdir."""
  workdir = os.path.join(root, 'reference')
  shutil.rmtree(workdir, ignore_errors=True)  # a failed earlier attempt
  with open(os.path.join(root, 'reference_sources.json'), 'w') as f:
    json.dump(source_hashes(), f)
  run_study(workdir, subprocess_env(cache_dir), os.path.join(root, 'reference.log'))
  return workdir


def make_resumed(root: str, cache_dir: str) -> dict:
  """The killed-and-resumed run in ``root``/resumed; returns its workdir and what the disk
  held at each kill."""
  env = subprocess_env(cache_dir)
  workdir = os.path.join(root, 'resumed')
  shutil.rmtree(workdir, ignore_errors=True)
  marker = os.path.join(root, 'paused')
  if os.path.exists(marker):
    os.remove(marker)
  seen = {}
  # 1. Killed after the metrics line of step 6: checkpoint 4 is the last one.
  run_and_kill(workdir, env, 'metrics:6', marker, os.path.join(root, 'kill1.log'))
  seen['kill1'] = dict(checkpoints=checkpoint_listing(workdir), steps=metric_steps(workdir))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 8, "loss": 61')  # a line cut by a crash: no end, no newline
  # 2. Killed inside the save of checkpoint 8, before orbax renames it into place.
  run_and_kill(workdir, env, 'save:8', marker, os.path.join(root, 'kill2.log'))
  seen['kill2'] = dict(checkpoints=checkpoint_listing(workdir), steps=metric_steps(workdir))
  # 3. Killed when scoring starts: training is done, results are not written.
  run_and_kill(workdir, env, 'eval', marker, os.path.join(root, 'kill3.log'))
  seen['kill3'] = dict(checkpoints=checkpoint_listing(workdir), steps=metric_steps(workdir),
                       results=os.path.exists(os.path.join(workdir, 'results.json')))
  os.makedirs(os.path.join(workdir, 'checkpoints', '99' + TMP_SUFFIX, 'default'))
  log = os.path.join(root, 'final.log')
  run_study(workdir, env, log)
  seen['final_log'] = _tail(log, 10**6)
  with open(os.path.join(root, 'reference_sources.json')) as f:
    changed = changed_sources(json.load(f), source_hashes())
  return dict(workdir=workdir, seen=seen, changed_sources=changed)


@contextlib.contextmanager
def unless_code_changed(resumed: dict):
  """Re-raises a failed comparison of the two runs as 'not comparable' when source files
  changed while they were made (a shared checkout that someone edits during the tests):
  the runs then executed different code."""
  try:
    yield
  except AssertionError as e:
    if resumed['changed_sources']:
      pytest.fail('source files changed while the reference and resumed runs were made, so '
                  'they may have run different code: '
                  f'{", ".join(resumed["changed_sources"])}. Re-run the tests. The '
                  f'comparison failed with: {str(e)[:1000]}')
    raise


# ------------------------------------------------------------------------------------ tests
def _restore_all(workdir: str) -> dict[int, dict]:
  """{step: restored pytree of numpy arrays} for every checkpoint orbax lists."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    return {step: manager.restore(step, args=ocp.args.StandardRestore())
            for step in manager.all_steps()}


def _leaves(tree) -> dict[str, np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_disk_state_at_each_kill(mnist_resumed_run):
  seen = mnist_resumed_run['seen']
  # Kill 1: checkpoint 4 only; the metrics line of step 6 was written before the kill.
  assert seen['kill1'] == dict(checkpoints=['4'], steps=[2, 4, 6])
  # Kill 2: the resumed run dropped line 6 and the torn line, re-did steps 5-8 and was killed
  # inside the save of step 8: an uncommitted temporary directory, no step 8.
  assert seen['kill2'] == dict(checkpoints=['4', '8' + TMP_SUFFIX], steps=[2, 4, 6, 8])
  # Kill 3: the run resumed from 4 again (the half-saved 8 does not count) and finished
  # training; max_checkpoints=2 keeps 8 and 12. No results yet.
  assert seen['kill3'] == dict(checkpoints=['12', '8'], steps=list(range(2, 14, 2)),
                               results=False)


def test_resumed_run_only_scores_after_training_finished(mnist_resumed_run):
  log = mnist_resumed_run['seen']['final_log']
  assert 'Resuming from the checkpoint of step 12' in log
  assert 'step 2/12' not in log and 'step 12/12' not in log  # no training step re-run


def test_parameters_equal_uninterrupted_run_bitwise(mnist_reference_run, mnist_resumed_run):
  # Bitwise: same CPU, same executables, same keys (fold_in(key, step)) and data order (a
  # function of (seed, epoch)), and the state restored from a checkpoint is exact.
  reference = _restore_all(mnist_reference_run)
  resumed = _restore_all(mnist_resumed_run['workdir'])
  assert TOTAL_STEPS in reference and TOTAL_STEPS in resumed
  a, b = _leaves(reference[TOTAL_STEPS]), _leaves(resumed[TOTAL_STEPS])
  assert a.keys() == b.keys() and any('params' in k for k in a)
  with unless_code_changed(mnist_resumed_run):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert int(b["['step']"]) == TOTAL_STEPS and int(b["['num_skipped']"]) == 0


def test_metrics_jsonl_whole_unique_and_equal_to_uninterrupted(mnist_reference_run,
                                                               mnist_resumed_run):
  def read(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      text = f.read()
    assert text.endswith('\n')
    return [json.loads(line) for line in text.splitlines()]  # every line is whole JSON
  reference, resumed = read(mnist_reference_run), read(mnist_resumed_run['workdir'])
  steps = [r['step'] for r in resumed]
  assert steps == list(range(LOG_EVERY, TOTAL_STEPS + 1, LOG_EVERY))  # no duplicate, no gap
  strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS}
  with unless_code_changed(mnist_resumed_run):
    assert [strip(r) for r in resumed] == [strip(r) for r in reference]


def test_every_remaining_checkpoint_restores(mnist_resumed_run):
  workdir = mnist_resumed_run['workdir']
  # The half-saved step 8 of kill 2 was replaced by a complete one; the planted stray
  # temporary directory was deleted when the final run's checkpoint manager started.
  assert checkpoint_listing(workdir) == ['12', '8']
  restored = _restore_all(workdir)
  assert sorted(restored) == [8, TOTAL_STEPS]
  for step, tree in restored.items():
    leaves = _leaves(tree)
    assert int(leaves["['step']"]) == step
    assert all(np.isfinite(v).all() for v in leaves.values())


# ------------------------------------------------------------------- the killed run (child)
def _hold(pause: str, marker: str) -> None:
  """Tells the test we are at ``pause`` and waits to be killed."""
  with open(marker + '.part', 'w') as f:
    f.write(pause)
  os.replace(marker + '.part', marker)
  time.sleep(3600)
  os._exit(3)  # not reached: the test kills the process


def _install_pause(pause: str, marker: str) -> None:
  kind, _, arg = pause.partition(':')
  if kind == 'metrics':  # after the metrics line of step ``arg``
    from vae_qc import workdir as wd  # pylint: disable=g-import-not-at-top
    append = wd.append_jsonl

    def append_then_hold(path, record):
      append(path, record)
      if record.get('step') == int(arg):
        _hold(pause, marker)
    wd.append_jsonl = append_then_hold
  elif kind == 'save':  # inside the save of step ``arg``, before orbax's commit (rename)
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def hold_then_finalize(self, *args, **kwargs):
      if self.get_final().name == arg:
        _hold(pause, marker)
      return await finalize(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = hold_then_finalize
  elif kind == 'eval':  # when scoring starts
    from vae_qc import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.Scorer.scores = lambda *a, **k: _hold(pause, marker)
  else:
    raise ValueError(f'unknown pause point {pause!r}')


if __name__ == '__main__':
  import runpy  # pylint: disable=g-import-not-at-top
  _install_pause(os.environ['VAE_QC_PAUSE_AT'], os.environ['VAE_QC_PAUSE_MARKER'])
  script = os.path.join(ROOT, 'experiments', 'mnist_anomaly.py')
  sys.argv = [script] + sys.argv[1:]
  runpy.run_path(script, run_name='__main__')
