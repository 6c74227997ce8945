"""Process-level settings that make XLA:CPU faster; call once, before the first JAX computation.

XLA:CPU allocates each execution's scratch memory (≈146 MB for one MNIST training step at
batch 128) with ``posix_memalign`` from an Eigen worker thread, and frees it at the end.
glibc serves such a block from a fresh ``mmap`` (a thread's arena cannot hold more than
64 MB, and blocks above the mmap threshold are mapped anyway) and unmaps it on free, so
every step touches ~36,000 new pages: a page fault and a zeroed page each, a third of the
step's time on a small VM. :func:`tune_host_allocator` makes glibc keep that memory:
one arena for all threads, no mmap for large blocks, no trimming of the heap's top. The
process then holds on to its peak heap, which it needs again at the next step anyway.

The same can be had from the environment, before the process starts::

  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 python ...
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt(3) parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def tune_host_allocator() -> bool:
  """Keeps XLA:CPU's large scratch buffers in glibc's heap between executions.

  Effective for threads started after the call (XLA's worker threads start with the first
  computation), so call it first thing in ``main``. Does nothing (returns False) where the
  C library is not glibc. Idempotent.
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
