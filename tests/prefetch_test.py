"""vae_qc.prefetch: same items in the same order, errors passed on, the thread stopped."""
import threading
import time

import numpy as np
import pytest

from vae_qc import prefetch


def _threads():
  return [t for t in threading.enumerate() if t.name == 'vae_qc-prefetch']


@pytest.mark.parametrize('size', [0, 1, 2, 5])
def test_same_items_in_order(size):
  items = [np.full((2, 3), i) for i in range(7)]
  got = list(prefetch.prefetch(iter(items), put=lambda x: x * 2, size=size))
  assert len(got) == 7
  for i, x in enumerate(got):
    np.testing.assert_array_equal(x, np.full((2, 3), 2 * i))
  assert not _threads()


def test_items_are_made_ahead_while_the_consumer_works():
  made = []

  def slow():
    for i in range(4):
      made.append(i)
      yield i

  it = prefetch.prefetch(slow(), size=2)
  assert next(it) == 0
  deadline = time.time() + 5
  while len(made) < 3 and time.time() < deadline:  # 0 consumed, 1 and 2 buffered
    time.sleep(0.01)
  assert made[:3] == [0, 1, 2]
  assert list(it) == [1, 2, 3]


def test_errors_reach_the_consumer_at_their_item():
  def failing():
    yield 1
    yield 2
    raise ValueError('bad batch')

  got = []
  with pytest.raises(ValueError, match='bad batch'):
    for x in prefetch.prefetch(failing(), size=2):
      got.append(x)
  assert got == [1, 2]
  assert not _threads()

  def bad_put(x):
    if x == 1:
      raise RuntimeError('cannot place')
    return x

  with pytest.raises(RuntimeError, match='cannot place'):
    list(prefetch.prefetch(iter(range(3)), put=bad_put))


def test_stopping_early_stops_the_thread():
  it = prefetch.prefetch(iter(range(1000)), size=2)
  for x in it:
    if x == 3:
      break
  it.close()
  assert not _threads()
