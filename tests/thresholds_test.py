"""vae_qc.thresholds against numpy's quantiles and a brute-force F1 search."""
import ml_collections
import numpy as np
import pytest

from vae_qc import config as config_lib
from vae_qc import thresholds
from vae_qc.errors import ConfigError


def _data(seed=0, n_normal=200, n_anomalous=60):
  rng = np.random.default_rng(seed)
  scores = np.concatenate([rng.normal(0, 1, n_normal), rng.normal(1.5, 1, n_anomalous)])
  labels = np.concatenate([np.zeros(n_normal, np.int32), np.ones(n_anomalous, np.int32)])
  return scores, labels


def _brute_force_f1(scores, labels):
  """max over every candidate threshold t (each score) of F1 of the verdicts score >= t."""
  best = (-1.0, None)
  for t in np.unique(scores):
    pred = scores >= t
    tp, fp = np.sum(pred & (labels == 1)), np.sum(pred & (labels == 0))
    fn = np.sum(~pred & (labels == 1))
    f1 = 2 * tp / (2 * tp + fp + fn)
    if f1 > best[0]:
      best = (f1, t)
  return best


@pytest.mark.parametrize('q', [0.5, 0.9, 0.99])
def test_normal_quantile_is_numpys_quantile_of_the_normal_scores(q):
  scores, labels = _data()
  assert thresholds.choose('normal_quantile', scores, labels, q) == np.quantile(
      scores[labels == 0], q)
  # Without labels every score is a normal one.
  assert thresholds.choose('normal_quantile', scores, None, q) == np.quantile(scores, q)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_f1_adaptive_is_the_brute_force_best_f1_threshold(seed):
  scores, labels = _data(seed)
  f1, t = _brute_force_f1(scores, labels)
  chosen = thresholds.choose('f1_adaptive', scores, labels, 0.99)
  assert chosen == pytest.approx(t)
  assert thresholds.at_threshold(scores, labels, chosen)['f1'] == pytest.approx(f1)


def test_at_threshold_counts():
  scores = np.array([0.1, 0.4, 0.5, 0.7, 0.9, 0.2])
  labels = np.array([0, 0, 1, 0, 1, 1])
  got = thresholds.at_threshold(scores, labels, 0.5)  # flagged: 0.5 (tp), 0.7 (fp), 0.9 (tp)
  assert got == pytest.approx({'precision': 2 / 3, 'recall': 2 / 3, 'f1': 2 / 3, 'fpr': 1 / 3})
  nothing = thresholds.at_threshold(scores, labels, 10.0)
  assert nothing == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'fpr': 0.0}


def test_split_indices_is_seeded_stratified_and_disjoint():
  labels = np.array([0] * 90 + [1] * 10)
  rest, val = thresholds.split_indices(labels, 0.2, seed=3)
  assert np.array_equal(np.sort(np.concatenate([rest, val])), np.arange(100))
  assert np.sum(labels[val] == 0) == 18 and np.sum(labels[val] == 1) == 2
  again, _ = thresholds.split_indices(labels, 0.2, seed=3)
  other = thresholds.split_indices(labels, 0.2, seed=4)[1]
  assert np.array_equal(rest, again) and not np.array_equal(val, other)
  _, tiny = thresholds.split_indices(np.array([0, 0, 0, 1]), 0.1, seed=0)
  assert len(tiny) == 2  # at least one per label


def _section(**fields):
  section = config_lib.threshold_section()
  section.update(fields)
  return section


@pytest.mark.parametrize('fields, match', [
    (dict(method='otsu'), 'method must be one of normal_quantile, f1_adaptive, none'),
    (dict(val_source='val'), "val_source must be 'train' or 'test'"),
    (dict(method='f1_adaptive', val_source='train'), "needs labelled validation"),
    (dict(quantile=1.0), 'quantile and pixel_quantile must be in'),
    (dict(val_fraction=0.0), 'val_fraction must be in'),
])
def test_check_rejects_bad_sections(fields, match):
  with pytest.raises(ConfigError, match=match):
    thresholds.check(_section(**fields))


def test_check_accepts_the_defaults_and_no_threshold():
  thresholds.check(_section())
  thresholds.check(_section(method='f1_adaptive', val_source='test'))
  thresholds.check(_section(method='none', val_fraction=0.0))
  with pytest.raises(ConfigError, match="no threshold for method 'none'"):
    thresholds.choose('none', np.zeros(3), None, 0.5)
  assert isinstance(_section(), ml_collections.ConfigDict)
