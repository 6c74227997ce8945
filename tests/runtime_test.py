"""vae_qc.runtime: the CPU settings apply before JAX starts, and change no value."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = '''
import json, os, sys
from vae_qc import runtime
before = runtime.tune_for_cpu()
import jax, jax.numpy as jnp
from jax import lax
x = jnp.arange(2 * 6 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 6, 3) / 100
k = jnp.arange(3 * 3 * 3 * 4, dtype=jnp.float32).reshape(3, 3, 3, 4) / 100
y = lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
print(json.dumps(dict(tuning=before, again=runtime.tune_for_cpu(),
                      flags=os.environ.get('XLA_FLAGS', ''), y=float(jnp.sum(y)))))
'''


def _probe(env_extra):
  env = dict(os.environ, PYTHONPATH=REPO, **env_extra)
  env.pop('XLA_FLAGS', None)
  env.update(env_extra)
  done = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True, env=env,
                        timeout=300, check=True)
  import json  # pylint: disable=g-import-not-at-top
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_tune_for_cpu_before_jax_and_same_values():
  tuned = _probe({})
  plain = _probe({'VAE_QC_TUNE_CPU': '0'})
  assert plain['tuning'] == {'host_allocator': False, 'threaded_convolutions': False}
  assert set(tuned['tuning']) == {'host_allocator', 'threaded_convolutions'}
  if sys.platform.startswith('linux'):
    assert tuned['tuning']['host_allocator']
  if tuned['tuning']['threaded_convolutions']:
    assert 'ynn_fusion_type=-individual_convolution' in tuned['flags']
  assert tuned['again'] == tuned['tuning']  # idempotent
  assert abs(tuned['y'] - plain['y']) <= 1e-4 * abs(plain['y'])


def test_user_xla_flags_are_respected():
  mine = '--xla_cpu_experimental_ynn_fusion_type=+individual_dot'
  out = _probe({'XLA_FLAGS': mine})
  assert out['flags'] == mine and not out['tuning']['threaded_convolutions']


def test_the_session_compiles_into_one_shared_cache():
  # tests/conftest.py sets it before JAX is imported; xdist workers and the studies that tests
  # start in subprocesses inherit it, so that they read each other's compiles.
  import jax  # pylint: disable=g-import-not-at-top
  path = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  assert path and os.path.isdir(path)
  assert jax.config.jax_compilation_cache_dir == path
