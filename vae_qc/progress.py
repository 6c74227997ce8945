"""One progress line for every long step, in the style of training's.

``Progress(total, 'scoring', unit='img')`` logs at most one line per ``interval_s`` (default
10 s, ``VAE_QC_PROGRESS_S`` overrides it) of the form::

  scoring 300/1400  61 img/s  ETA 18s

and, when the step took longer than one interval, a last ``done`` line. Steps that end within
the first interval print nothing, so short runs and tests stay quiet. Only process 0 of a
multi-process run logs (``jax.process_index()``, asked only if JAX is already imported).

A step is never silent for longer than the interval: a daemon thread (``heartbeat``) logs the
line when the interval passes without one, e.g. while the first batch compiles or while one
slow batch runs (``scoring 0/165  img/s n/a  elapsed 20s``). :meth:`Progress.finish` (and
:meth:`close`, and leaving a ``with`` block) stops it; so does leaving the function that
created the Progress in any other way (an exception), which the thread checks every second.
"""
from __future__ import annotations

import logging as std_logging
import os
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

from absl import logging

T = TypeVar('T')


def default_interval() -> float:
  """Seconds between two lines: ``VAE_QC_PROGRESS_S`` or 10."""
  try:
    return float(os.environ.get('VAE_QC_PROGRESS_S', '10'))
  except ValueError:
    return 10.0


def _is_process_zero() -> bool:
  jax = sys.modules.get('jax')
  if jax is None:  # data generation and folder reading run before JAX starts
    return True
  try:
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except  # no backend yet: one process
    return True


def format_seconds(seconds: float) -> str:
  """'42s', '3m05s', '1h02m'."""
  s = int(round(max(seconds, 0.0)))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s // 3600}h{s % 3600 // 60:02d}m'


class Progress:
  """done/total, rate and ETA of one step, logged at a steady interval.

  Args:
    total: units of work in all (images, runs, files).
    what: the step's name, first on the line ('scoring', 'maps', 'generating', ...).
    unit: the unit of the rate ('img' -> 'img/s').
    interval_s: seconds between lines (default :func:`default_interval`).
    enabled: False silences it (default: process 0 only).
    log: the logging function (default ``absl.logging.info``); tests pass their own.
  """

  def __init__(self, total: int, what: str, unit: str = 'img', interval_s: float | None = None,
               enabled: bool | None = None, log: Callable[..., None] | None = None,
               heartbeat: bool = True, owner_depth: int = 1):
    self.total, self.what, self.unit = int(total), what, unit
    self.interval_s = default_interval() if interval_s is None else float(interval_s)
    self.enabled = _is_process_zero() if enabled is None else enabled
    self._log = log or logging.info
    self.done = 0
    self.start = self._last = time.monotonic()
    self.lines = 0
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = None
    if heartbeat and self.enabled and self.interval_s > 0:
      # The frame that created this Progress (owner_depth frames up): while it runs, the step
      # runs. A reference to it, not to the Progress, so the thread keeps nothing alive.
      owner = (threading.get_ident(), sys._getframe(owner_depth))  # pylint: disable=protected-access
      self._thread = threading.Thread(target=self._beat, args=(owner,),
                                      name=f'progress-{what}', daemon=True)
      self._thread.start()

  @staticmethod
  def _running(owner) -> bool:
    thread_id, frame = owner
    f = sys._current_frames().get(thread_id)  # pylint: disable=protected-access
    while f is not None:
      if f is frame:
        return True
      f = f.f_back
    return False

  def _beat(self, owner) -> None:
    while not self._stop.wait(min(1.0, self.interval_s)):
      if not self._running(owner):  # left by an exception, without finish()
        self._stop.set()
        return
      self.tick()

  def close(self) -> None:
    """Stops the heartbeat thread (idempotent)."""
    self._stop.set()

  def line(self) -> str:
    elapsed = max(time.monotonic() - self.start, 1e-9)
    rate = self.done / elapsed
    if rate >= 10:
      rate_text = f'{rate:.0f} {self.unit}/s'
    elif rate >= 0.1:
      rate_text = f'{rate:.2f} {self.unit}/s'
    else:
      rate_text = f'{self.unit}/s n/a' if not self.done else f'{60 * rate:.2f} {self.unit}/min'
    eta = (f'ETA {format_seconds((self.total - self.done) / rate)}' if self.done
           else f'elapsed {format_seconds(elapsed)}')
    return f'{self.what} {self.done}/{self.total}  {rate_text}  {eta}'

  def _emit(self, text: str) -> None:
    self.lines += 1
    self._last = time.monotonic()
    if self.enabled:
      self._log('%s', text)

  def update(self, n: int = 1) -> None:
    """``n`` more units are done; logs if the interval has passed."""
    self.done += int(n)
    self.tick()

  def tick(self) -> None:
    """Logs the line if the interval has passed since the last one (even with no news)."""
    with self._lock:
      if (not self._stop.is_set() and time.monotonic() - self._last >= self.interval_s
          and self.done < self.total):
        self._emit(self.line())

  def finish(self) -> None:
    """A last line ('... done in Xs') if the step logged any line before; stops the
    heartbeat."""
    self.close()
    with self._lock:
      if self.lines:
        elapsed = time.monotonic() - self.start
        self._emit(f'{self.what} {self.done}/{self.total} done in {format_seconds(elapsed)} '
                   f'({self.done / max(elapsed, 1e-9):.1f} {self.unit}/s)')

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc) -> None:
    if exc[0] is None:
      self.finish()
    else:
      self.close()


def track(items: Iterable[T], total: int, what: str, unit: str = 'img',
          **kwargs) -> Iterator[T]:
  """Yields ``items``, counting one unit each (a :class:`Progress` around a loop)."""
  # The owner is the caller of the first next() (the loop), not this generator's own frame,
  # which is off the stack between items.
  p = Progress(total, what, unit, owner_depth=2, **kwargs)
  try:
    for item in items:
      yield item
      p.update(1)
    p.finish()
  finally:
    p.close()  # also when the loop is left early (the generator is closed)


# ------------------------------------------------------------------------------- watchdog
class _LastRecord(std_logging.Handler):
  """Notes when the last log record was emitted (any logger below the root's handlers)."""

  def __init__(self):
    super().__init__(std_logging.DEBUG)
    self.time = time.monotonic()

  def emit(self, record) -> None:  # pylint: disable=unused-argument
    self.time = time.monotonic()


class watch:  # pylint: disable=invalid-name  # used as a context manager, like open()
  """A safety net around a whole command: when nothing at all has been logged for
  ``interval_s`` (e.g. while the first training step compiles on a busy machine), logs
  ``<what>: working, 12s since the last line``. Steps with their own :class:`Progress` never
  trigger it. ``with progress.watch('mnist study'): ...``"""

  def __init__(self, what: str, interval_s: float | None = None):
    self.what = what
    self.interval_s = default_interval() if interval_s is None else float(interval_s)
    self._handler = _LastRecord()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name=f'watch-{what}', daemon=True)

  def _beat(self) -> None:
    while not self._stop.wait(min(1.0, self.interval_s)):
      quiet = time.monotonic() - self._handler.time
      if quiet >= self.interval_s:
        logging.info('%s: working, %s since the last line', self.what, format_seconds(quiet))

  def __enter__(self) -> 'watch':
    if self.interval_s > 0:
      logging.get_absl_logger().addHandler(self._handler)
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    logging.get_absl_logger().removeHandler(self._handler)
