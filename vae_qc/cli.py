"""Shared entry-point plumbing of the experiment scripts: flag parsing that reports config
mistakes in one line, and turning our errors into a clear message and exit status 2."""
from __future__ import annotations

import logging as py_logging
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from vae_qc import config as config_lib
from vae_qc import progress
from vae_qc import runtime
from vae_qc import study
from vae_qc import train
from vae_qc.errors import Preempted, PREEMPTED_EXIT_STATUS, VaeQcError


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def flags_parser(argv: list[str]) -> list[str]:
  """absl's parser, but config mistakes are one-line errors (exit status 2): unknown
  ``--config.*`` fields (listing the valid ones), values that do not parse, and values of
  the wrong type, element types of tuples included (which ml_collections lets through).

  A ``--config.x=v`` given more than once counts once, with its last value, whatever the
  type (ml_collections 1.1 concatenates repeated tuple overrides: ``--config.model.blocks=(8,)
  --config.model.blocks=(16,)`` would be ``(8, 16)``)."""
  argv = _last_override_wins(argv)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: unknown config field
    config = _config_template(argv)
    if config is not None:
      try:
        config_lib.check_override_flags(config, argv)
      except VaeQcError as err:
        _fail(str(err))
    _fail(f'unknown config field {e}.')
  _check_config_types(argv)
  return rest


def _last_override_wins(argv: list[str]) -> list[str]:
  """argv without the earlier ones of repeated ``--config.field=value`` arguments."""
  def name(arg):
    return arg.split('=', 1)[0] if arg.startswith('--config.') and '=' in arg else None
  last = {name(a): i for i, a in enumerate(argv) if name(a)}
  return [a for i, a in enumerate(argv) if name(a) is None or last[name(a)] == i]


def _check_config_types(argv: list[str]) -> None:
  """Compares the parsed ``--config`` with the config file's own values, field by field."""
  if 'config' not in flags.FLAGS:
    return
  parsed = flags.FLAGS['config'].value
  if not isinstance(parsed, ml_collections.ConfigDict):
    return
  try:
    template = _config_template(argv)
    if template is not None:
      config_lib.check_types(parsed, template)
  except VaeQcError as err:
    _fail(str(err))


def _config_template(argv):
  """The ConfigDict named by --config=FILE[:ARG] in argv, loaded without overrides."""
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if path is None:
    default = flags.FLAGS['config'].default if 'config' in flags.FLAGS else None
    path = default if isinstance(default, str) else None
  return None if path is None else config_lib.load_file(path)


class _QuietLibraries:
  """Drops INFO records that orbax and friends log for every checkpoint."""

  def filter(self, record) -> bool:  # pylint: disable=invalid-name
    noisy = ('/orbax/', '/etils/', '/tensorflow_datasets/', '/jax/_src/xla_bridge')
    return record.levelno > 20 or not any(n in record.pathname for n in noisy)


def run(fn: Callable[[], object], what: str = 'run') -> object:
  """Calls ``fn``; a :class:`VaeQcError` becomes 'error: ...' on stderr and exit status 2,
  :class:`Preempted` 'preempted: ...' and exit status 75 (``PREEMPTED_EXIT_STATUS``).

  First applies :func:`vae_qc.runtime.tune_for_cpu` (before JAX starts; ``VAE_QC_TUNE_CPU=0``
  turns it off): same values, faster on a CPU (README, Performance, has the measurements).
  """
  logging.info('CPU tuning: %s', runtime.tune_for_cpu())
  logging.get_absl_handler().addFilter(_QuietLibraries())
  py_logging.getLogger('absl').addFilter(_QuietLibraries())
  try:
    with progress.watch(what):  # never silent for long, whatever the step
      return fn()
  except Preempted as e:
    logging.warning('%s', e)
    print(f'preempted: {e} (exit status {PREEMPTED_EXIT_STATUS})', file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_STATUS)
  except VaeQcError as e:
    logging.error('%s', e)
    _fail(str(e))


def study_app(example_config: str) -> None:
  """The whole ``main`` of a study script: ``--config``, ``--workdir``,
  ``--allow_config_change``, then ``vae_qc.study.train_and_evaluate`` (flax-example style)."""
  workdir = flags.DEFINE_string('workdir', None, 'Run directory (config, checkpoints, results).')
  allow_config_change = flags.DEFINE_bool(
      'allow_config_change', False, 'Resume in a workdir whose saved config differs.')
  config = config_flags.DEFINE_config_file('config', None, f'Config file, e.g. {example_config}.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    del argv
    signals = config.value.train.get('preemption_signals', 'TERM,USR1')
    try:
      train.parse_signals(signals)
    except VaeQcError as e:
      _fail(str(e))
    with train.preemption_signals(signals):  # checkpoint and exit 75 on these signals
      run(lambda: study.train_and_evaluate(config.value, workdir.value,
                                           allow_config_change.value),
          f'{config.value.data.get("name", "")} study'.strip())

  app.run(main, flags_parser=flags_parser)
