"""The likelihood scores that need more than the model (latent mixture, background model,
posterior refit) in a whole tiny MNIST study: the study makes what they need, scores the
validation set apart, and ``vae_qc.load_run`` rebuilds them so predict == evaluate."""
import csv
import os

import numpy as np
import pytest

import experiments.configs.mnist as mnist_config
from tests.conftest import tiny_mnist_overrides
import vae_qc
from vae_qc import config as config_lib
from vae_qc import data as data_lib
from vae_qc import study

pytestmark = pytest.mark.slow  # a whole (tiny) MNIST study with a background model

SCORES = ('neg_elbo', 'latent_nll', 'neg_elbo_plus_latent', 'likelihood_regret',
          'likelihood_regret_iw', 'background_ratio', 'background_ratio_elbo')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('mnist_scores'))
  overrides = dict(tiny_mnist_overrides(), **{
      'data.source': 'bundled', 'data.anomalous_digit': 1, 'eval.scores': SCORES,
      'eval.regret_steps': 3, 'eval.latent_components': 2, 'background.epochs': 1})
  config = config_lib.apply_overrides(mnist_config.get_config(), overrides)
  results = study.train_and_evaluate(config, workdir)
  return workdir, config, results


def test_study_makes_the_aux_and_scores_validation_apart(run):
  workdir, _, results = run
  assert os.path.exists(os.path.join(workdir, 'latent_gmm.npz'))
  assert os.path.isdir(os.path.join(workdir, 'background', 'checkpoints'))
  assert set(results['scores']) == set(SCORES)
  val = results['validation']
  assert set(val['scores']) == set(SCORES) and val['n_anomalous'] > 0 and val['n_normal'] > 0
  rows = list(csv.DictReader(open(os.path.join(workdir, 'val_scores.csv'))))
  test_ids = {r['id'] for r in csv.DictReader(open(os.path.join(workdir, 'scores.csv')))}
  assert len(rows) == val['n_normal'] + val['n_anomalous']
  assert not {r['id'] for r in rows} & test_ids
  # >= 0 up to Monte-Carlo noise (K = 4 here): the refit improves the bound on average.
  assert np.mean([float(r['likelihood_regret']) for r in rows]) > 0


def test_predict_equals_evaluate_for_every_new_score(run):
  workdir, config, _ = run
  dataset = data_lib.load(config.data)
  rows = list(csv.DictReader(open(os.path.join(workdir, 'scores.csv'))))
  pick = np.r_[0:6, len(rows) - 6:len(rows)]  # normal and anomalous images
  got = vae_qc.load_run(workdir).score(dataset.test_images[pick]).scores
  for name in SCORES:
    expected = np.array([float(rows[i][name]) for i in pick])
    np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-3, err_msg=name)
