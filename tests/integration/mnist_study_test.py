"""The MNIST study end to end on the real bundled subset, with a tiny schedule."""
import csv
import json
import os
import subprocess
import sys

import pytest

import experiments.configs.mnist as mnist_config
from tests.conftest import tiny_mnist_overrides
from vae_qc import config as config_lib
from vae_qc import study

pytestmark = pytest.mark.slow  # a whole MNIST study

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('mnist_run'))
  overrides = dict(tiny_mnist_overrides(), **{
      'data.source': 'bundled', 'data.anomalous_digit': 0, 'data.max_train': 1024,
      'data.max_test_normal': 200, 'data.max_test_anomalous': 100, 'model.blocks': (16, 32),
      'model.fc': 32, 'train.epochs': 3, 'train.log_every_steps': 8})
  config = config_lib.apply_overrides(mnist_config.get_config(), overrides)
  results = study.train_and_evaluate(config, workdir)
  return workdir, results


def test_workdir_contract(run):
  workdir, results = run
  for name in ('config.json', 'metrics.jsonl', 'results.json', 'scores.csv', 'checkpoints',
               'plots/roc.png', 'plots/histograms.png', 'plots/reconstructions.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  saved = json.load(open(os.path.join(workdir, 'results.json')))
  assert saved['n_normal'] == 200 and saved['n_anomalous'] == 100
  assert saved['data']['source'] == 'bundled' and 'split' in saved['data']
  for name in mnist_config.get_config().eval.scores:
    assert set(saved['scores'][name]) >= {'auroc', 'auprc', 'f1_max', 'fpr_at_95_tpr'}
  rows = list(csv.DictReader(open(os.path.join(workdir, 'scores.csv'))))
  assert len(rows) == 300 and {'id', 'label', 'neg_elbo', 'kl'} <= set(rows[0])
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert lines[-1]['step'] == 3 * (1024 // 64)
  assert json.load(open(os.path.join(workdir, 'config.json')))['data']['anomalous_digit'] == 0


def test_heldout_digit_is_detected_above_chance(run):
  _, results = run
  assert results['scores']['neg_elbo']['auroc'] > 0.75


def _cli(*args):
  return subprocess.run([sys.executable, 'experiments/mnist_anomaly.py',
                         '--config=experiments/configs/mnist.py', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_cli_unknown_field_lists_valid_ones(tmp_path):
  p = _cli(f'--workdir={tmp_path}', '--config.data.digit=3')
  assert p.returncode != 0
  assert "unknown config field 'config.data.digit'" in p.stderr
  assert 'anomalous_digit' in p.stderr  # the valid fields are listed


def test_cli_digit_out_of_range(tmp_path):
  p = _cli(f'--workdir={tmp_path}', '--config.data.anomalous_digit=12')
  assert p.returncode == 2
  assert 'anomalous_digit must be an integer 0-9' in p.stderr
  assert 'Traceback' not in p.stderr
