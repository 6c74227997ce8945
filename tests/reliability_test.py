"""Reliability of a run: the NaN guard, workdir safety, atomic files, and failing checkpoint
saves or restores. (Kill-and-resume: tests/kill_resume_test.py; determinism:
tests/determinism_test.py; bad inputs: tests/bad_input_test.py.)
"""
import errno
import json
import os
import subprocess
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity
import pytest

import experiments.configs.mnist as mnist_config
from tests.conftest import tiny_mnist_overrides
from tests.conftest import tiny_model_config
from tests.conftest import tiny_train_config
from vae_qc import config as config_lib
from vae_qc import models
from vae_qc import study
from vae_qc import train as train_lib
from vae_qc import workdir as wd
from vae_qc.errors import TrainingError, VaeQcError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_model_config()
_train_config = tiny_train_config  # 64 images: 4 steps per epoch, checkpoints at 3, 6, 8


@pytest.fixture(scope='module')
def tiny_step():
  """The compiled train step of TINY, shared by the tests here (one compile)."""
  return train_lib.compile_train_step(TINY, train_lib.make_optimizer(_train_config().train))


def _steps_on_disk(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def _new_live_threads(before):
  """Non-daemon threads started since ``before`` that are still alive after a short wait
  (they would keep the process from exiting)."""
  new = [t for t in threading.enumerate() if t not in before and not t.daemon]
  for t in new:
    t.join(timeout=5)
  return [t.name for t in new if t.is_alive()]


# ---------------------------------------------------------------------------------- NaN guard
def _study_config(**overrides):
  base = dict(tiny_mnist_overrides(), **{
      'data.source': 'bundled', 'train.checkpoint_every_steps': 4, 'train.log_every_steps': 2,
      'eval.scores': ('neg_elbo',)})
  return config_lib.apply_overrides(mnist_config.get_config(), dict(base, **overrides))


def _poison_step(monkeypatch, bad_step):
  """Puts a NaN into the batch of step ``bad_step`` (0-based) of every training run.

  The data on disk stays clean, so the up-front check of the training images (a DataError,
  see bad_input_test) passes: this is how a numerical blow-up looks to the guard.
  """
  batches = train_lib.batches

  def poisoned(images, batch_size, seed, start_step, num_steps, transform=None):
    for step, x in enumerate(batches(images, batch_size, seed, start_step, num_steps,
                                     transform), start_step):
      if step == bad_step:
        x = x.copy()
        x[0, 3, 3, 0] = np.nan
      yield x
  monkeypatch.setattr(train_lib, 'batches', poisoned)


def test_nan_stop_names_step_and_checkpoint_then_skip_resumes(tmp_path, tiny_images,
                                                              tiny_step, monkeypatch):
  _poison_step(monkeypatch, 4)  # the 5th update, after the checkpoint of step 3
  workdir = str(tmp_path)
  with pytest.raises(TrainingError) as error:
    train_lib.train(_train_config(), workdir, tiny_images, TINY, step_fn=tiny_step)
  message = str(error.value)
  assert 'non-finite loss or gradient at step 4; the update was not applied' in message
  assert f'last good checkpoint is step 3 in {workdir}/checkpoints' in message
  assert "nan_policy='skip'" in message
  # The same call with nan_policy='skip' (a resume-safe field) resumes from step 3, skips the
  # bad update again, counts it and finishes with finite parameters.
  state = train_lib.train(_train_config(nan_policy='skip'), workdir, tiny_images, TINY,
                          step_fn=tiny_step)
  assert int(state.step) == 8 and int(state.num_skipped) == 1 and int(state.first_bad_step) == 4
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state.params))
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in lines] == [2, 4, 6, 8]  # lines after checkpoint 3 were redone
  assert [l['skipped'] for l in lines] == [0, 0, 1, 1]


def test_nan_skip_count_in_results_json(tmp_path, monkeypatch):
  _poison_step(monkeypatch, 5)
  results = study.train_and_evaluate(_study_config(**{'train.nan_policy': 'skip'}),
                                     str(tmp_path))
  saved = json.load(open(tmp_path / 'results.json'))
  assert saved['train']['skipped_updates'] == results['train']['skipped_updates'] == 1
  assert saved['train']['steps'] == 8
  assert [json.loads(l)['skipped'] for l in open(tmp_path / 'metrics.jsonl')] == [0, 0, 1, 1]
  assert all(np.isfinite(v) for v in saved['scores']['neg_elbo'].values() if v is not None)


def test_skipped_updates_from_a_checkpoint_do_not_stop_a_resumed_run(tmp_path, tiny_images,
                                                                    tiny_step):
  images = tiny_images.copy()
  images[5, 1, 1, 0] = np.nan  # in one batch of each epoch
  state = train_lib.train(_train_config(nan_policy='skip', epochs=1), str(tmp_path), images,
                          TINY, step_fn=tiny_step)
  assert int(state.num_skipped) == 1
  # Resuming with 'stop' on clean data: the restored count is not a new non-finite update.
  state = train_lib.train(_train_config(nan_policy='stop'), str(tmp_path), tiny_images, TINY,
                          step_fn=tiny_step)
  assert int(state.step) == 8 and int(state.num_skipped) == 1


# -------------------------------------------------------------------- checkpoint save failures
def _fail_create(monkeypatch, step):
  create = atomicity.AtomicRenameTemporaryPath.create

  async def failing(self, *args, **kwargs):
    if self.get_final().name == str(step):
      raise OSError(errno.ENOSPC, 'No space left on device')
    return await create(self, *args, **kwargs)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'create', failing)


def _fail_finalize(monkeypatch, step):
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def failing(self, *args, **kwargs):
    if self.get_final().name == str(step):
      raise OSError(errno.ENOSPC, 'No space left on device')
    return await finalize(self, *args, **kwargs)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', failing)


def _fail_write(monkeypatch, step):
  # What tensorstore raises when the array data cannot be written (seen with a real file-size
  # limit: 'OUT_OF_RANGE: Error writing ... Failed writing'): a ValueError, not an OSError.
  save = ocp.CheckpointManager.save

  def failing(self, s, *args, **kwargs):
    if s == step:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "params/0" in OCDBT database: '
                       'No space left on device')
    return save(self, s, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', failing)


@pytest.mark.parametrize('fail', [_fail_create, _fail_finalize, _fail_write],
                         ids=['mkdir', 'commit', 'array_write'])
def test_disk_full_on_checkpoint_save(tmp_path, tiny_images, tiny_step, monkeypatch, fail):
  workdir = str(tmp_path)
  fail(monkeypatch, 6)
  before = set(threading.enumerate())
  with pytest.raises(TrainingError) as error:
    train_lib.train(_train_config(), workdir, tiny_images, TINY, step_fn=tiny_step)
  message = str(error.value)
  assert 'saving the checkpoint of step 6' in message and 'No space left' in message
  assert 're-run the same command' in message
  assert 'resumes from the last complete checkpoint, step 3' in message
  # Nothing is left running that would keep the process from exiting (orbax's async mode
  # left threads waiting 5 minutes when the step directory could not be created).
  assert _new_live_threads(before) == []
  assert _steps_on_disk(workdir)[0] == '3' and '6' not in _steps_on_disk(workdir)
  # Space freed: the same call resumes from step 3 and finishes; leftovers are cleaned up.
  monkeypatch.undo()
  state = train_lib.train(_train_config(), workdir, tiny_images, TINY, step_fn=tiny_step)
  assert int(state.step) == 8 and _steps_on_disk(workdir) == ['6', '8']


def test_first_checkpoint_fails_says_training_restarts(tmp_path, tiny_images, tiny_step,
                                                       monkeypatch):
  _fail_finalize(monkeypatch, 3)
  with pytest.raises(TrainingError, match='no complete checkpoint yet, so training restarts '
                                          'from step 0'):
    train_lib.train(_train_config(), str(tmp_path), tiny_images, TINY, step_fn=tiny_step)


# ------------------------------------------------------------------ checkpoint restore failures
def test_damaged_checkpoint_says_what_to_delete(tmp_path, tiny_images, tiny_step):
  workdir = str(tmp_path)
  train_lib.train(_train_config(), workdir, tiny_images, TINY, step_fn=tiny_step)
  latest = os.path.join(workdir, 'checkpoints', '8')
  for folder, _, files in os.walk(latest):  # e.g. a disk error: every file cut to 0 bytes
    for name in files:
      open(os.path.join(folder, name), 'w').close()
  with pytest.raises(TrainingError) as error:
    train_lib.train(_train_config(), workdir, tiny_images, TINY, step_fn=tiny_step)
  message = str(error.value)
  assert 'cannot restore the checkpoint of step 8' in message
  assert f'delete {latest} to resume from step 6' in message
  # Following the advice works.
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(latest)
  state = train_lib.train(_train_config(), workdir, tiny_images, TINY, step_fn=tiny_step)
  assert int(state.step) == 8


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, tiny_images, tiny_step,
                                                      monkeypatch):
  # What --allow_config_change with a changed model leads to.
  workdir = str(tmp_path)
  train_lib.train(_train_config(epochs=1), workdir, tiny_images, TINY, step_fn=tiny_step)
  wider = models.ModelConfig(image_shape=(8, 8, 1), blocks=(4,), fc=16, latent=2)
  opened, make = [], train_lib.checkpoint_manager

  def recorded(*args, **kwargs):  # notes whether each manager gets closed
    manager = make(*args, **kwargs)
    close, manager.was_closed = manager.close, False

    def closing():
      manager.was_closed = True
      close()
    manager.close = closing
    opened.append(manager)
    return manager
  monkeypatch.setattr(train_lib, 'checkpoint_manager', recorded)
  with pytest.raises(TrainingError, match='does not fit the model: use a new --workdir') as err:
    train_lib.train(_train_config(), workdir, tiny_images, wider)
  # Refused from the checkpoint's metadata, naming a weight, before orbax reads an array (a
  # restore that fails inside orbax leaves a coroutine that warns when it is collected).
  assert 'params/decoder/BatchNorm_0/bias: checkpoint (8,), model (16,)' in str(err.value)
  # The failed run closed its manager: one left open leaks an event loop that warns
  # ('Event loop is closed') when it is collected, in whatever test runs then.
  assert opened and all(m.was_closed for m in opened)


# ------------------------------------------------------------------------------ workdir safety
def _saved_config(workdir, **overrides):
  config = _study_config(**overrides)
  os.makedirs(workdir, exist_ok=True)
  wd.write_json(os.path.join(workdir, 'config.json'), config_lib.to_dict(config))
  return config


def test_cli_resume_with_a_changed_config_names_the_fields(tmp_path):
  workdir = str(tmp_path / 'run')
  _saved_config(workdir)
  before = open(os.path.join(workdir, 'config.json')).read()
  args = [f'--config.{k}={v!r}' if isinstance(v, tuple) else f'--config.{k}={v}'
          for k, v in dict(tiny_mnist_overrides(), **{'data.source': 'bundled',
                                                      'eval.scores': ('neg_elbo',)}).items()]
  p = subprocess.run(
      [sys.executable, 'experiments/mnist_anomaly.py', '--config=experiments/configs/mnist.py',
       f'--workdir={workdir}', *args, '--config.model.fc=32', '--config.train.learning_rate=0.01',
       '--config.eval.elbo_samples=2', '--config.train.epochs=5'],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT))
  assert p.returncode == 2, p.stderr[-3000:]
  error = [l for l in p.stderr.splitlines() if l.startswith('error: ')]
  assert len(error) == 1 and 'Traceback' not in p.stderr
  assert f'workdir {workdir} holds a run with a different config' in error[0]
  assert 'model.fc: 16 -> 32' in error[0] and 'train.learning_rate: 0.001 -> 0.01' in error[0]
  # Fields that do not change the trained model may change on resume.
  assert 'elbo_samples' not in error[0] and 'epochs' not in error[0]
  assert '--allow_config_change' in error[0]
  assert open(os.path.join(workdir, 'config.json')).read() == before


def test_allow_config_change_and_resume_safe_fields(tmp_path):
  workdir = str(tmp_path)
  _saved_config(workdir)
  changed = _study_config(**{'model.fc': 32})
  with pytest.raises(TrainingError, match=r'model\.fc: 16 -> 32'):
    train_lib.prepare_workdir(workdir, changed)
  train_lib.prepare_workdir(workdir, changed, allow_config_change=True)
  assert json.load(open(os.path.join(workdir, 'config.json')))['model']['fc'] == 32
  # Resume-safe: epochs (train longer), logging and checkpoint cadence, nan_policy, eval.
  safe = config_lib.apply_overrides(changed, {
      'train.epochs': 9, 'train.log_every_steps': 5, 'train.nan_policy': 'skip',
      'eval.log_px_samples': 3, 'data.max_test_normal': 7})
  train_lib.prepare_workdir(workdir, safe)


def test_unreadable_config_json_is_replaced(tmp_path):
  # Documented: config.json is written atomically, so a damaged one was damaged from outside;
  # it cannot be compared, and the current config replaces it.
  (tmp_path / 'config.json').write_text('{"seed": 0, "mod')
  config = _study_config()
  train_lib.prepare_workdir(str(tmp_path), config)
  assert json.load(open(tmp_path / 'config.json')) == config_lib.to_dict(config)


# ---------------------------------------------------------------------------- atomic files
def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
  path = str(tmp_path / 'results.json')
  wd.write_json(path, {'v': 1})

  def disk_full(fd):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(os, 'fsync', disk_full)
  with pytest.raises(VaeQcError, match='cannot write .*results.json.*No space left'):
    wd.write_json(path, {'v': 2, 'big': list(range(1000))})
  monkeypatch.undo()
  assert json.load(open(path)) == {'v': 1}
  assert os.listdir(tmp_path) == ['results.json']  # the temporary file was removed


def test_atomic_write_never_shows_a_partial_file(tmp_path, monkeypatch):
  # A crash between writing and renaming leaves the old content under the name.
  path = str(tmp_path / 'scores.csv')
  wd.write_csv(path, ['id', 'score'], [['a', 1.5]])

  def crash(src, dst):
    raise KeyboardInterrupt  # stands in for the process dying here
  monkeypatch.setattr(os, 'replace', crash)
  with pytest.raises(KeyboardInterrupt):
    wd.write_csv(path, ['id', 'score'], [['a', 2.5], ['b', 3.5]])
  monkeypatch.undo()
  assert open(path).read() == 'id,score\na,1.5\n'


def test_trim_jsonl_keeps_whole_lines_up_to_the_checkpoint(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'wb') as f:
    f.write(b'{"step": 2, "loss": 1.0}\n'
            b'\n'
            b'[1, 2]\n'  # JSON, but not a record
            b'{"step": "4"}\n'  # a record without a numeric step
            b'{"step": 4, "loss": 0.5}\n'
            b'{"step": 4, "lo\xff\xfe}\n'  # torn and not UTF-8
            b'{"step": 6, "loss": 0.4}\n'  # written after the last checkpoint
            b'{"step": 3, "loss": 0.45}')  # torn: no newline
  assert wd.trim_jsonl(path, 4) == 2
  assert [json.loads(l)['step'] for l in open(path)] == [2, 4]
  assert wd.trim_jsonl(str(tmp_path / 'missing.jsonl'), 4) == 0
