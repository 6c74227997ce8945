"""Double-buffered input: the next batches are gathered and placed on the device in a
background thread while the current step runs, so the step never waits for its input.

  for x in prefetch(batches(images, ...), put=jnp.asarray, size=2):
    state, metrics = step_fn(state, x, key)

The order and the values are those of the wrapped iterator: only the time they are made at
changes. ``put`` is any host→device placement (``jax.device_put``, or the sharded one of
``vae_qc.parallel``), called from the background thread.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar('T')

_DONE = object()


class _Failure:
  """An exception raised by the producer, re-raised in the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


def prefetch(iterable: Iterable[T], put: Callable[[T], Any] = lambda x: x,
             size: int = 2) -> Iterator[Any]:
  """Yields ``put(x)`` for each ``x`` of ``iterable``, up to ``size`` of them made ahead.

  Args:
    iterable: host batches, e.g. ``train.batches(...)`` ([B, H, W, C] numpy arrays).
    put: the placement of one batch (runs in the background thread).
    size: batches held ready (2: double buffering). ``size <= 0``: no thread, in order.

  Exceptions of ``iterable`` or ``put`` reach the consumer at the batch where they happened.
  Stopping early (``break``, an exception in the loop, ``close()``) stops the thread.
  """
  if size <= 0:
    for x in iterable:
      yield put(x)
    return
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def offer(item) -> bool:
    """Puts ``item`` unless the consumer has gone; False if it has."""
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for x in iterable:
        if not offer(put(x)):
          return
    except BaseException as e:  # pylint: disable=broad-except  # re-raised by the consumer
      offer(_Failure(e))
      return
    offer(_DONE)

  thread = threading.Thread(target=produce, name='vae_qc-prefetch', daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is _DONE:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join()
