"""Shared fixtures: tiny model configs and data so that JAX compiles stay few and small."""
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

_JAX_CACHE = pytest.StashKey[tuple[str, list[str]]]()
_XLA_FLAGS = pytest.StashKey[str | None]()
# XLA's CPU backend without LLVM's optimisation passes: the suite's tiny models spend most of
# their time compiling, and a cold tiny MNIST study took 36 s of CPU with them and 22 s
# without (the suite 12 min 9 s -> about 9 min). The arithmetic is the same up to float
# rounding, and the suite's references check it. Not for training on several devices: at
# this level XLA 0.10's CPU collectives gave wrong gradients on 8 devices and a non-finite
# loss across two processes, so those tests start their processes with
# xla_env(..., users_optimisation=True).
_TEST_XLA_FLAG = '--xla_backend_optimization_level=0'


def xla_env(num_devices: int, users_optimisation: bool = False) -> dict[str, str]:
  """This process's environment for a process with ``num_devices`` CPU devices, compiled as
  this session compiles (its results compared with this process's within float32 noise) or,
  with ``users_optimisation``, with XLA's default optimisation."""
  env = dict(os.environ)
  flags = os.environ.get('XLA_FLAGS', '')
  if users_optimisation:
    flags = flags.replace(_TEST_XLA_FLAG, '')
  env['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={num_devices}'.strip()
  return env


def jax_cache_env(path: str) -> dict[str, str]:
  """Environment variables that make JAX keep every compile in the persistent cache ``path``
  (by default it keeps only compiles over a second; the tiny models' take less)."""
  return {'JAX_COMPILATION_CACHE_DIR': path, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def pytest_configure(config):
  """One persistent JAX compilation cache for the whole session, unless one is set already:
  the tiny studies that many tests run (in this process, in pytest-xdist workers and in the
  subprocesses they start, which inherit the environment) compile the same functions, and
  read them back instead of compiling them again (the suite took 9 min 22 s instead of
  13 min 10 s on 2 cores). Every compile is kept (:func:`jax_cache_env`). Made by the process
  that starts the session, before any JAX import, and removed when it ends. The session's
  XLA_FLAGS add ``_TEST_XLA_FLAG`` unless they set the optimisation level already (not for the
  processes that train on several devices, :func:`xla_env`)."""
  if os.environ.get('PYTEST_XDIST_WORKER'):
    return
  flags = os.environ.get('XLA_FLAGS')
  if '--xla_backend_optimization_level' not in (flags or ''):
    config.stash[_XLA_FLAGS] = flags
    os.environ['XLA_FLAGS'] = f'{flags or ""} {_TEST_XLA_FLAG}'.strip()
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  path = tempfile.mkdtemp(prefix='vae_qc_tests_jax_cache_')
  env = {k: v for k, v in jax_cache_env(path).items() if k not in os.environ}
  os.environ.update(env)
  config.stash[_JAX_CACHE] = (path, list(env))


def pytest_unconfigure(config):
  if _XLA_FLAGS in config.stash:
    flags = config.stash[_XLA_FLAGS]
    if flags is None:
      os.environ.pop('XLA_FLAGS', None)
    else:
      os.environ['XLA_FLAGS'] = flags
  path, names = config.stash.get(_JAX_CACHE, ('', []))
  if path:
    shutil.rmtree(path, ignore_errors=True)
  for name in names:
    os.environ.pop(name, None)


# Modules whose tests read one run made once (conftest's shared runs, or a module-scoped
# study): under pytest-xdist each goes to one worker as a whole. The three reading the shared
# MNIST runs are one unit, so that no worker waits on the lock of a run that another makes.
_SHARED_RUN_UNITS = {'tests/determinism_test.py': 'mnist_reference_run',
                     'tests/kill_resume_test.py': 'mnist_reference_run',
                     'tests/preemption_test.py': 'mnist_reference_run'}


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # pytest -p no:xdist has no such hook
def pytest_xdist_make_scheduler(config, log):
  """``-n N`` (``./launch.sh test``) sends each test module to one worker as a whole (and
  the modules of :data:`_SHARED_RUN_UNITS` as one), the largest first. Under pytest-xdist's
  default ``--dist load`` the tests of a module are spread over the workers, and each worker
  that takes one makes the module's run again (a tiny study: 10-60 s each). An explicit
  ``--dist`` other than ``load`` keeps its own scheduler. (``--dist loadgroup`` with
  ``xdist_group`` marks would say the same, but it does not group under pytest 9.2.)"""
  if config.getvalue('dist') != 'load':
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top

  class ModuleScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
      module = nodeid.split('::', 1)[0]
      return _SHARED_RUN_UNITS.get(module, module)

  return ModuleScheduling(config, log)


@pytest.fixture(scope='session')
def tiny_images():
  """[64, 8, 8, 1] float32 images in [0, 1]: blurred blobs, deterministic."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:8, 0:8]
  centres = rng.uniform(2, 6, size=(64, 2))
  ims = np.exp(-((yy[None] - centres[:, 0, None, None]) ** 2 +
                 (xx[None] - centres[:, 1, None, None]) ** 2) / 4.0)
  return ims[..., None].astype(np.float32)


def tiny_model_config():
  """An 8×8×1 VAE with one block of 4 filters: compiles in about a second."""
  from vae_qc import models  # pylint: disable=g-import-not-at-top
  return models.ModelConfig(image_shape=(8, 8, 1), blocks=(4,), fc=8, latent=2)


def tiny_train_config(**train):
  """The MNIST config with 2 epochs, batches of 16, logs every 2 steps, checkpoints every 3
  (64 images: 4 steps per epoch); ``train`` overrides ``config.train`` fields."""
  from experiments.configs import mnist as mnist_config  # pylint: disable=g-import-not-at-top
  config = mnist_config.get_config()
  config.train.update(dict(epochs=2, batch_size=16, log_every_steps=2, checkpoint_every_steps=3))
  config.train.update(train)
  return config


def tiny_mnist_overrides(workdir_unused=None):
  """Config overrides for a seconds-long MNIST study on the bundled subset."""
  return {
      'data.max_train': 256, 'data.max_test_normal': 48, 'data.max_test_anomalous': 32,
      'model.blocks': (8,), 'model.fc': 16, 'model.latent': 2,
      'train.epochs': 2, 'train.batch_size': 64, 'train.log_every_steps': 2,
      'train.checkpoint_every_steps': 4,
      'eval.elbo_samples': 4, 'eval.log_px_samples': 8, 'eval.chunk_size': 4,
      'eval.map_samples': 2, 'eval.batch_size': 40, 'eval.num_plot_images': 2,
  }


# Kill-and-resume and determinism (tests/kill_resume_test.py, tests/determinism_test.py): one
# uninterrupted MNIST run and one killed three times and resumed, as subprocesses sharing a
# JAX compilation cache. Made once per test session, also under pytest-xdist (-n): the first
# worker that needs a run makes it under a file lock, the others read its result.
def _shared_run(tmp_path_factory, name, make):
  import fcntl  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the folder that every worker's basetemp is in
  base = root / 'reliability_runs'
  base.mkdir(exist_ok=True)
  with open(base / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = base / f'{name}.json'
    if done.exists():
      return json.loads(done.read_text())
    value = make(str(base), str(base / 'jax_cache'))
    done.write_text(json.dumps(value))
    return value


@pytest.fixture(scope='session')
def mnist_reference_run(tmp_path_factory):
  """Workdir of an uninterrupted tiny MNIST study (12 steps), run by the CLI."""
  from tests import kill_resume_test  # pylint: disable=g-import-not-at-top
  return _shared_run(tmp_path_factory, 'reference', kill_resume_test.make_reference)


@pytest.fixture(scope='session')
def mnist_resumed_run(tmp_path_factory, mnist_reference_run):
  """The same study SIGKILLed three times and re-run: {'workdir', 'seen'}."""
  del mnist_reference_run  # made first: it fills the compilation cache
  from tests import kill_resume_test  # pylint: disable=g-import-not-at-top
  return _shared_run(tmp_path_factory, 'resumed', kill_resume_test.make_resumed)


def output_excerpt(text: str, tail: int = 3000, head: int = 1500) -> str:
  """A failed subprocess's output for an assertion message: the end, and also the start when
  it is long (a native crash prints 'Fatal Python error' first and a module list last)."""
  if len(text) <= head + tail:
    return text
  return f'{text[:head]}\n[... {len(text) - head - tail} characters ...]\n{text[-tail:]}'
