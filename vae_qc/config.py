"""Config helpers: validated overrides, JSON round-trip, and the fields that matter on resume.

Configs are ``ml_collections.ConfigDict`` returned by ``experiments/configs/*.py``. Scripts take
``--config=FILE --config.section.field=value``; an unknown field or a value of the wrong type
is a :class:`ConfigError` that names the valid fields.
"""
from __future__ import annotations

import ast
import json
from typing import Any, Iterable, Sequence

import ml_collections

from vae_qc.errors import ConfigError

# Sections whose fields may change between a run and its resumption (they do not change what
# the trained parameters are): evaluation, logging cadence, plot counts.
RESUME_SAFE = ('eval.', 'train.log_every_steps', 'train.checkpoint_every_steps',
               'train.max_checkpoints', 'train.epochs', 'train.nan_policy', 'data.allow_download',
               'data.tfds_data_dir', 'data.idx_dir', 'data.max_test', 'data.on_bad_image',
               'parallel.', 'threshold.', 'predict.')


def _node(config: ml_collections.ConfigDict, path: str):
  """(parent ConfigDict, leaf name) of a dotted path; ConfigError listing valid names."""
  parts = path.split('.')
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(['config'] + parts[:i])
      valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ConfigError(f'unknown config field {"config." + path!r}: {where} has no field '
                        f'{part!r}. Valid fields of {where}: {", ".join(valid)}.')
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


def _coerce(old: Any, value: Any, path: str) -> Any:
  if isinstance(value, str) and not isinstance(old, str):
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
      raise ConfigError(f'config.{path}: cannot read {value!r} as a {type(old).__name__}.') from e
  if isinstance(old, bool) != isinstance(value, bool) and old is not None:
    raise ConfigError(f'config.{path} must be a bool, got {value!r}.')
  if isinstance(old, float) and isinstance(value, int):
    value = float(value)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if old is not None and not isinstance(value, type(old)):
    raise ConfigError(f'config.{path} must be a {type(old).__name__} (like {old!r}), '
                      f'got {type(value).__name__} {value!r}.')
  return value


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``{'section.field': value}`` applied, type-checked."""
  config = ml_collections.ConfigDict(config.to_dict())
  for path, value in overrides.items():
    parent, leaf = _node(config, path)
    with parent.ignore_type():
      parent[leaf] = _coerce(parent[leaf], value, path)
  return config


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
  safe = tuple(safe)
  return sorted(k for k in set(a) | set(b)
                if a.get(k) != b.get(k) and not any(k.startswith(s) or k == s for s in safe))
