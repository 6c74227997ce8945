"""Process-level settings that make XLA:CPU faster; call :func:`tune_for_cpu` first thing in
``main``, before the first JAX computation. Neither changes any computed value.

1. Host allocator (:func:`tune_host_allocator`). XLA:CPU allocates each execution's scratch
   memory (≈146 MB for one MNIST training step at batch 128) with ``posix_memalign`` from a
   worker thread and frees it at the end. glibc serves such a block from a fresh ``mmap`` (a
   thread's arena cannot hold more than 64 MB) and unmaps it on free, so every step touches
   ~36,000 new pages: a page fault and a zeroed page each, a third of the step's time on a
   small VM (and multi-threaded steps ran on one core while it faulted). The fix
   makes glibc keep that memory: one arena, no mmap for large blocks, no trimming of the
   heap's top. The process then keeps its peak heap, which the next step needs anyway.

2. Multi-threaded convolutions (:func:`use_threaded_convolutions`). jaxlib 0.10 hands
   convolutions to YNNPACK, which runs each one on a single thread: with 2 cores a training
   step used 1.0 of them. Leaving convolutions to XLA's Eigen kernels (matrix products and
   element-wise ops stay with YNNPACK) uses every core, at the same speed on one core.

The same from the environment, before the process starts::

  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 \\
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution python ...

``VAE_QC_TUNE_CPU=0`` in the environment turns :func:`tune_for_cpu` off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
import sys
import time

from absl import logging

# mallopt(3) parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
_THREADED_CONVOLUTIONS = f'--{_YNN_FLAG}=-individual_convolution'


@functools.cache
def tune_host_allocator() -> bool:
  """Keeps XLA:CPU's large scratch buffers in glibc's heap between executions.

  Effective for threads started after the call (XLA's worker threads start with the first
  computation). Does nothing (returns False) where the C library is not glibc. Idempotent.
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return all([mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0),
              mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)])


def _jaxlib_knows(flag: str) -> bool:
  """Whether the installed jaxlib defines ``flag`` (XLA aborts on unknown XLA_FLAGS)."""
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top  # only its path; absent: False
    path = os.path.join(os.path.dirname(jaxlib.__file__), 'libjax_common.so')
    with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
      return m.find(flag.encode()) >= 0
  except (ImportError, OSError, ValueError):
    return False


def _backends_started() -> bool:
  try:
    # jax._src is private and may move: imported here, where an ImportError is handled.
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(getattr(xla_bridge, '_backends', {}))
  except ImportError:
    return False


@functools.cache
def use_threaded_convolutions() -> bool:
  """Adds ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` to XLA_FLAGS.

  Only before JAX starts its backends (XLA reads XLA_FLAGS once), only where this jaxlib has
  the flag, and not where XLA_FLAGS already sets it. Returns whether the flag is in effect.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if _YNN_FLAG in flags:
    return _THREADED_CONVOLUTIONS in flags
  if _backends_started():
    logging.warning('vae_qc.runtime: JAX is already running; call tune_for_cpu() before the '
                    'first computation for multi-threaded convolutions.')
    return False
  if not _jaxlib_knows(_YNN_FLAG):
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {_THREADED_CONVOLUTIONS}'.strip()
  return True


def tune_for_cpu() -> dict[str, bool]:
  """Both settings (unless ``VAE_QC_TUNE_CPU=0``); returns which are in effect."""
  if os.environ.get('VAE_QC_TUNE_CPU', '1') == '0':
    return dict(host_allocator=False, threaded_convolutions=False)
  return dict(host_allocator=tune_host_allocator(),
              threaded_convolutions=use_threaded_convolutions())


def matmul_peak_gflops(sizes=(512, 1024, 2048), reps: int = 7) -> float:
  """float32 GFLOP/s of the fastest square ``jnp.dot`` on the default device (best of ``reps``
  at each size): the rate a benchmark's model passes can be set against."""
  import jax  # pylint: disable=g-import-not-at-top  # after tune_for_cpu
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  best = 0.0
  f = jax.jit(jnp.dot)
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      f(a, a).block_until_ready()
      times.append(time.perf_counter() - t)
    best = max(best, 2.0 * n**3 / min(times) / 1e9)
  return best
