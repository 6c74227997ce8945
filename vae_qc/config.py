"""Config helpers: validated overrides, JSON round-trip, and the fields that matter on resume.

Configs are ``ml_collections.ConfigDict`` returned by ``experiments/configs/*.py``. Scripts take
``--config=FILE --config.section.field=value``; an unknown field is a :class:`ConfigError`
that names the valid fields, a value of the wrong type (tuple elements included) one that
names the expected type with an example. :func:`apply_overrides` raises nothing else, whatever
its input (tests/bad_input_test.py checks this with hypothesis); :func:`check_types` applies
the same checks to a config parsed from the command line.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Any, Iterable, Sequence

import ml_collections

from vae_qc.errors import ConfigError

# Sections whose fields may change between a run and its resumption (they do not change what
# the trained parameters are): evaluation, logging cadence, plot counts, the further scales
# (config.data.scales: models of their own, in their own directories).
RESUME_SAFE = ('eval.', 'train.log_every_steps', 'train.checkpoint_every_steps',
               'train.max_checkpoints', 'train.epochs', 'train.steps', 'train.time_budget_s',
               'train.nan_policy',
               'train.preemption_signals', 'data.allow_download',
               'data.tfds_data_dir', 'data.idx_dir', 'data.max_test', 'data.on_bad_image',
               'parallel.', 'threshold.', 'background.', 'data.scales')

# Fields added after runs were saved, with the value that gives the behaviour of before: a saved
# config.json without one reads as having it, so those runs resume and score as they were.
ADDED_DEFAULTS = {'data.zoom': 1.0, 'data.max_period': 0.0, 'model.inpaint': 0,
                  'train.time_budget_s': 0.0}


def _node(config: ml_collections.ConfigDict, path: str):
  """(parent ConfigDict, leaf name) of a dotted path; ConfigError listing valid names."""
  if not isinstance(path, str):
    raise ConfigError(f'config field names are dotted strings like "train.epochs", got '
                      f'{_short(path)}.')
  parts = path.split('.')
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(['config'] + parts[:i])
      if isinstance(node, ml_collections.ConfigDict):
        valid = f'Valid fields of {where}: {", ".join(sorted(node.keys()))}.'
      else:
        valid = f'{where} is a value, not a section.'
      raise ConfigError(f'unknown config field {_short("config." + path)}: {where} has no field '
                        f'{_short(part)}. {valid}')
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def check_override_flags(config: ml_collections.ConfigDict, argv: Sequence[str],
                         flag: str = 'config') -> None:
  """Raises ConfigError for any ``--config.a.b`` in argv that ``config`` does not have."""
  prefix = f'--{flag}.'
  for arg in argv:
    if arg.startswith(prefix):
      _node(config, arg[len(prefix):].split('=', 1)[0])


def _short(value: Any, limit: int = 80) -> str:
  """repr(value), cut to ``limit`` characters (messages stay one readable line)."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 5] + ' ...' + text[-1]


_KINDS = {bool: 'a bool (True or False)', int: 'an integer', float: 'a number',
          str: 'a string'}
_PLURALS = {bool: 'bools', int: 'integers', float: 'numbers', str: 'strings'}


def _kind(old: Any) -> str:
  """What a value like ``old`` is, in words: 'an integer', 'a tuple of integers', ..."""
  if isinstance(old, (tuple, list)):
    element = _element_type(old)
    return f'a {type(old).__name__}' + (f' of {_PLURALS[element]}' if element else '')
  for t in (bool, int, float, str):
    if isinstance(old, t):
      return _KINDS[t]
  return f'a {type(old).__name__}'


def _element_type(seq) -> type | None:
  """The one scalar type of a non-empty homogeneous tuple/list (None otherwise)."""
  types = {bool if isinstance(v, bool) else type(v) for v in seq}
  if len(types) == 1 and next(iter(types)) in _KINDS:
    return types.pop()
  if types == {int, float}:
    return float
  return None


def _check_scalar(t: type, value: Any) -> Any:
  """``value`` as type ``t`` (int is widened to float), or raises TypeError."""
  if t is bool:
    ok = isinstance(value, bool)
  elif t is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif t is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = float(value) if ok else value
  else:
    ok = isinstance(value, t)
  if not ok:
    raise TypeError
  return value


def check_value(old: Any, value: Any, where: str) -> Any:
  """``value`` for a field whose current (default) value is ``old``, type-checked.

  The type of ``old`` decides: bool, int (not bool), float (int is widened), str, tuple or
  list (of the element type of ``old`` if it has one), ConfigDict (a section cannot be set to
  a value). ``old`` None accepts anything. Returns the value (tuple for a tuple field).

  Raises:
    ConfigError: naming ``where``, the expected kind with an example, and the value.
  """
  if old is None:
    return value
  if isinstance(old, ml_collections.ConfigDict):
    fields = sorted(old.keys())
    example = f', e.g. {where}.{fields[0]}' if fields else ''
    raise ConfigError(f'{where} is a section, not a value: set its fields instead'
                      f'{example} (fields: {", ".join(fields)}).')
  problem = ConfigError(f'{where} must be {_kind(old)} (like {_short(old)}), got '
                        f'{type(value).__name__} {_short(value)}.')
  try:
    if isinstance(old, (tuple, list)):
      if not isinstance(value, (tuple, list)):
        raise TypeError
      element = _element_type(old)
      if element is not None:
        value = [_check_scalar(element, v) for v in value]
      return type(old)(value)
    for t in (bool, int, float, str):
      if isinstance(old, t):
        return _check_scalar(t, value)
    if not isinstance(value, type(old)):
      raise TypeError
    return value
  except TypeError:
    raise problem from None


def _parse(old: Any, value: str, where: str) -> Any:
  """A command-line string for a non-string field, read as a Python literal."""
  try:
    return ast.literal_eval(value)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    if old is None:
      return value  # a field without a type keeps the string
    raise ConfigError(f'{where}: cannot read {_short(value)} as {_kind(old)} (like '
                      f'{_short(old)}).') from None


def _coerce(old: Any, value: Any, path: str) -> Any:
  where = f'config.{path}'
  if isinstance(value, str) and not isinstance(old, (str, ml_collections.ConfigDict)):
    value = _parse(old, value, where)
  return check_value(old, value, where)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``{'section.field': value}`` applied, type-checked.

  A string value for a non-string field is read as a Python literal ('3', '(8, 16)').
  ``config`` itself is not changed.

  Raises:
    ConfigError: an unknown field (listing the valid ones), a section set to a value, or a
      value of the wrong type (naming the expected type). Nothing else, whatever the input.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for path, value in overrides.items():
    parent, leaf = _node(config, path)
    with parent.ignore_type():
      parent[leaf] = _coerce(parent[leaf], value, path)
  return config


def check_types(config: ml_collections.ConfigDict, template: ml_collections.ConfigDict,
                prefix: str = 'config') -> None:
  """Raises ConfigError if a field of ``config`` has a type other than ``template``'s.

  Command-line overrides are parsed by ml_collections, which checks the top-level type only
  (``--config.model.blocks="(8, 'a')"`` passes as a tuple); this checks them as
  :func:`apply_overrides` does, element types included. Every problem is listed.
  """
  problems = []
  for key in template.keys():
    old = template[key]
    if key not in config:
      continue
    value = config[key]
    where = f'{prefix}.{key}'
    if isinstance(old, ml_collections.ConfigDict):
      if isinstance(value, ml_collections.ConfigDict):
        try:
          check_types(value, old, where)
        except ConfigError as e:
          problems.append(str(e))
      else:
        problems.append(f'{where} must be a section, got {_short(value)}.')
      continue
    try:
      check_value(old, value, where)
    except ConfigError as e:
      problems.append(str(e))
  if problems:
    raise ConfigError(' '.join(problems))


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json())


def flatten(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def changed_fields(saved: dict[str, Any], current: dict[str, Any],
                   safe: Iterable[str] = RESUME_SAFE) -> list[str]:
  """Dotted names of fields that differ and matter for resuming (not in ``safe``)."""
  a, b = flatten(saved), flatten(current)
  a.update({k: v for k, v in ADDED_DEFAULTS.items() if k in b and k not in a})
  safe = tuple(safe)
  return sorted(k for k in set(a) | set(b)
                if a.get(k) != b.get(k) and not any(k.startswith(s) or k == s for s in safe))


def load_file(path: str) -> ml_collections.ConfigDict:
  """The ConfigDict of a config file, as ``--config=PATH[:ARG]`` reads it (no overrides).

  ``PATH[:ARG]``: a Python file whose ``get_config()`` (or ``get_config(ARG)``) returns it,
  loaded by path like ml_collections' ``config_flags`` does.
  """
  file, _, arg = path.partition(':')
  if not os.path.isfile(file):
    raise ConfigError(f'config file {file} not found.')
  name = '_vae_qc_config_' + os.path.splitext(os.path.basename(file))[0]
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def threshold_section(method: str = 'normal_quantile', val_source: str = 'train'):
  """``config.threshold`` (see vae_qc.thresholds): how the decision threshold is chosen."""
  t = ml_collections.ConfigDict()
  t.method = method  # normal_quantile | f1_adaptive | none
  t.score = ''  # '' = the first of config.eval.scores
  t.quantile = 0.99  # normal_quantile: expected false-positive rate ~ 1 - quantile
  t.val_source = val_source  # train: good images held out of training | test: part of the test set
  t.val_fraction = 0.1
  t.pixel_quantile = 0.99  # predicted-mask threshold: this quantile of normal images' maps
  return t


def parallel_section():
  """``config.parallel`` (see vae_qc.parallel). The batch is sharded over every device of every
  process; config.train.batch_size is the GLOBAL batch, a multiple of the device count."""
  p = ml_collections.ConfigDict()
  p.distributed = 'auto'  # auto (if the fields below or SLURM ask) | on | off
  p.coordinator_address = ''  # host:port of process 0; '' = cluster environment
  p.num_processes = 0  # 0 = from the cluster environment (1 if none)
  p.process_id = -1  # -1 = from the cluster environment
  p.timeout_s = 60  # an unreachable coordinator is an error after this long
  p.num_devices = 0  # 0 = every device; N = the first N (one process only)
  p.cpu_collectives = 'gloo'  # CPU collectives between processes: gloo | mpi
  return p
