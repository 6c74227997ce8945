"""Shared entry-point plumbing of the experiment scripts: flag parsing that reports config
mistakes in one line, and turning our errors into a clear message and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable

from absl import flags
from absl import logging

from vae_qc.errors import VaeQcError


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def flags_parser(argv: list[str]) -> list[str]:
  """absl's parser, but unknown ``--config.*`` fields and bad values are one-line errors."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: unknown config field
    config = _config_template(argv)
    if config is not None:
      from vae_qc import config as config_lib  # pylint: disable=g-import-not-at-top
      try:
        config_lib.check_override_flags(config, argv)
      except VaeQcError as err:
        _fail(str(err))
    _fail(f'unknown config field {e}.')
  return rest


def _config_template(argv):
  """The ConfigDict named by --config=FILE in argv, loaded without overrides."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if path is None:
    default = flags.FLAGS['config'].default if 'config' in flags.FLAGS else None
    path = default if isinstance(default, str) else None
  if path is None:
    return None
  spec = importlib.util.spec_from_file_location('_vae_qc_config', path.split(':')[0])
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


class _QuietLibraries:
  """Drops INFO records that orbax and friends log for every checkpoint."""

  def filter(self, record) -> bool:  # pylint: disable=invalid-name
    noisy = ('/orbax/', '/etils/', '/tensorflow_datasets/')
    return record.levelno > 20 or not any(n in record.pathname for n in noisy)


def run(fn: Callable[[], object]) -> object:
  """Calls ``fn``; a :class:`VaeQcError` becomes 'error: ...' on stderr and exit status 2."""
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  logging.get_absl_handler().addFilter(_QuietLibraries())
  py_logging.getLogger('absl').addFilter(_QuietLibraries())
  try:
    return fn()
  except VaeQcError as e:
    logging.error('%s', e)
    _fail(str(e))
