"""The run directory contract: config.json, metrics.jsonl, results.json, scores.csv, plots/.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a
crash leaves either the old or the new version, never half of one.

One writer per workdir: :func:`lock` takes ``<workdir>/lock`` with ``fcntl.flock`` for the
life of the process and writes its pid, host and command into it; a second process gets a
:class:`WorkdirInUse` error naming the first. The OS drops the lock when its holder dies
(even by kill -9), so no stale lock is ever left behind.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import shlex
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vae_qc.errors import VaeQcError

# Files are created with the permissions open() would give them (0o666 less the umask), not
# mkstemp's 0o600. Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  if isinstance(obj, (np.floating, float)):
    f = float(obj)
    return f if math.isfinite(f) else None
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  return obj


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes ``data`` to ``path`` via a temporary file and ``os.replace``."""
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.')
  except OSError as e:
    raise VaeQcError(f'cannot write {path}: {e}. Choose a writable --workdir.') from e
  try:
    try:
      os.fchmod(fd, 0o666 & ~_UMASK)
    except OSError:  # a file system without permissions (vfat, some mounts): keep mkstemp's
      pass
    with os.fdopen(fd, 'wb') as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise VaeQcError(f'cannot write {path}: {e}.') from e


def write_json(path: str, obj: Any) -> None:
  atomic_write(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + '\n')


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def read_table(path: str, parse: Callable[[Any], Any], missing: str, what: str) -> Any:
  """``parse`` of the JSON table a run saved at ``path`` (a calibration fitted after
  training): VaeQcError "<path> is missing: <missing>" when it is not there, and one naming
  ``what`` (e.g. 'a map calibration') when it does not parse."""
  if not os.path.exists(path):
    raise VaeQcError(f'{path} is missing: {missing}')
  try:
    return parse(read_json(path))
  except (KeyError, TypeError, ValueError) as e:
    raise VaeQcError(f'{path} is not {what} ({e}); delete it and re-run the study to fit it '
                     'again.') from e


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(header)
  for row in rows:
    writer.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])
  atomic_write(path, buf.getvalue())


def write_npz(path: str, arrays: dict[str, Any]) -> None:
  """``np.savez`` of ``arrays`` to ``path``, atomically."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  atomic_write(path, buf.getvalue())


def append_jsonl(path: str, record: dict[str, Any]) -> None:
  """Appends one line; a single write() of a whole line, flushed and fsynced."""
  line = json.dumps(_jsonable(record)) + '\n'
  try:
    with open(path, 'a') as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise VaeQcError(f'cannot append to {path}: {e}. Free disk space or fix the permissions '
                     'and re-run the same command; training resumes from the last '
                     'checkpoint.') from e


def trim_jsonl(path: str, max_step: int) -> int:
  """Keeps the whole lines with ``step <= max_step`` (drops torn lines and lines a killed run
  wrote after its last checkpoint). Returns the number of lines kept."""
  if not os.path.exists(path):
    return 0
  kept = []
  with open(path, errors='replace') as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      step = record.get('step', 0) if isinstance(record, dict) else None
      if (line.endswith('\n') and isinstance(step, (int, float)) and not isinstance(step, bool)
          and step <= max_step):
        kept.append(line)
  atomic_write(path, ''.join(kept))
  return len(kept)


# ------------------------------------------------------------------------------ writer lock
LOCK_FILE = 'lock'
_held: dict[str, int] = {}  # real path of a lock file -> the descriptor holding its lock


class WorkdirInUse(VaeQcError):
  """Another live process holds the workdir's lock."""


def _holder(fd: int) -> str:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 65536).decode(errors='replace') or '{}')
  except (OSError, ValueError):
    info = {}
  if not isinstance(info, dict) or 'pid' not in info:
    return 'another process'
  command = str(info.get('command', '?'))
  command = command if len(command) <= 200 else command[:197] + '...'
  return (f'process {info.get("pid")} on {info.get("host", "?")} since '
          f'{info.get("started", "?")} ({command})')


def lock(workdir: str) -> str:
  """Takes the writer lock of ``workdir`` for the life of this process; returns its path.

  Re-entrant within a process. Raises :class:`WorkdirInUse` (one line naming the pid, host,
  start time and command of the holder) if another process holds it. On a file system
  without ``flock`` support the run goes on unlocked, with a warning.
  """
  path = os.path.join(workdir, LOCK_FILE)
  key = os.path.realpath(path)
  if key in _held:
    return path
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError:  # a read-only workdir: the first write will say so, clearly
    return path
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = _holder(fd)
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise WorkdirInUse(f'workdir {workdir} is in use by {holder}; wait for it to finish or '
                         'stop it, or choose another --workdir.') from None
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning('cannot lock %s (%s): the file system does not support flock; nothing '
                    'stops a second run from writing into this workdir.', path, e)
    return path
  info = dict(pid=os.getpid(), host=socket.gethostname(),
              started=time.strftime('%Y-%m-%d %H:%M:%S'), command=shlex.join(sys.argv))
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
  except OSError:  # the lock holds all the same; only the description is missing
    pass
  _held[key] = fd
  return path


def unlock(workdir: str) -> None:
  """Releases this process's lock of ``workdir`` (if held); exiting releases it too."""
  fd = _held.pop(os.path.realpath(os.path.join(workdir, LOCK_FILE)), None)
  if fd is not None:
    os.close(fd)  # closing the only descriptor of the open file drops the flock
