"""Determinism: two runs of the same command and seed write the same results.

The two runs are the session fixtures of ``tests/conftest.py`` (see
``tests/kill_resume_test.py``): an uninterrupted tiny MNIST study and the same study killed
three times (SIGKILL) and re-run. Everything they write is compared; the only fields allowed to
differ are the ones that measure the machine (``TIMING_KEYS``, wherever they appear).
"""
import csv
import json
import os

import pytest

from tests.kill_resume_test import unless_code_changed

pytestmark = pytest.mark.slow  # compares two whole MNIST studies (kill_resume_test fixtures)

TIMING_KEYS = frozenset({'seconds', 'img_per_s', 'eta_s'})


def strip_timing(obj):
  """``obj`` without the keys of ``TIMING_KEYS``, at any depth."""
  if isinstance(obj, dict):
    return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
  if isinstance(obj, list):
    return [strip_timing(v) for v in obj]
  return obj


def _timing_paths(obj, prefix=''):
  if isinstance(obj, dict):
    for k, v in obj.items():
      if k in TIMING_KEYS:
        yield prefix + k
      yield from _timing_paths(v, f'{prefix}{k}.')


def _read_json(workdir, name):
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def test_results_json_identical_but_timing(mnist_reference_run, mnist_resumed_run):
  a = _read_json(mnist_reference_run, 'results.json')
  b = _read_json(mnist_resumed_run['workdir'], 'results.json')
  # Timing lives in these fields only; a new one must be added to TIMING_KEYS consciously.
  assert sorted(_timing_paths(a)) == ['eval.seconds', 'train.seconds']
  with unless_code_changed(mnist_resumed_run):
    assert strip_timing(a) == strip_timing(b)
  assert a['train']['steps'] == 12 and a['train']['skipped_updates'] == 0
  assert a['scores']['neg_elbo']['auroc'] is not None


def test_scores_csv_byte_identical(mnist_reference_run, mnist_resumed_run):
  with open(os.path.join(mnist_reference_run, 'scores.csv'), 'rb') as f:
    a = f.read()
  with open(os.path.join(mnist_resumed_run['workdir'], 'scores.csv'), 'rb') as f:
    b = f.read()
  with unless_code_changed(mnist_resumed_run):
    assert a == b
  rows = list(csv.DictReader(a.decode().splitlines()))
  assert len(rows) == 48 + 32
  assert len({r['neg_elbo'] for r in rows}) > 1  # real scores, not a constant


@pytest.mark.parametrize('name', ['config.json', 'model.json', 'plots/roc.png',
                                  'plots/histograms.png', 'plots/reconstructions.png'])
def test_other_outputs_byte_identical(mnist_reference_run, mnist_resumed_run, name):
  path_a = os.path.join(mnist_reference_run, name)
  assert os.path.exists(path_a), f'the study no longer writes {name}'
  with open(path_a, 'rb') as f:
    a = f.read()
  with open(os.path.join(mnist_resumed_run['workdir'], name), 'rb') as f:
    b = f.read()
  with unless_code_changed(mnist_resumed_run):
    assert a == b


def test_written_files_are_not_private(mnist_reference_run):
  # Atomic writes go through mkstemp (mode 0600); the files must end up as open() makes them.
  umask = os.umask(0)
  os.umask(umask)
  for name in ('config.json', 'results.json', 'scores.csv', 'metrics.jsonl'):
    mode = os.stat(os.path.join(mnist_reference_run, name)).st_mode & 0o777
    assert mode == 0o666 & ~umask, (name, oct(mode))
