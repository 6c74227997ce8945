"""Image-level metrics against scikit-learn."""
import numpy as np
import pytest
from sklearn import metrics as skm

from vae_qc import metrics
from vae_qc.errors import VaeQcError


def _cases():
  rng = np.random.default_rng(1)
  for n, ties in ((50, False), (200, True), (7, True)):
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + labels
    if ties:
      scores = np.round(scores, 0)
    yield scores, labels


@pytest.mark.parametrize('scores,labels', list(_cases()))
def test_matches_sklearn(scores, labels):
  assert metrics.auroc(scores, labels) == pytest.approx(
      skm.roc_auc_score(labels, scores), abs=1e-12)
  assert metrics.auprc(scores, labels) == pytest.approx(
      skm.average_precision_score(labels, scores), abs=1e-12)
  p, r, t = skm.precision_recall_curve(labels, scores)
  f1 = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0))
  assert metrics.f1_max(scores, labels)[0] == pytest.approx(f1, abs=1e-12)
  fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
  assert metrics.fpr_at_tpr(scores, labels, 0.95) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_perfect_and_inverted():
  labels = np.array([0, 0, 1, 1])
  assert metrics.auroc([0, 1, 2, 3], labels) == 1.0
  assert metrics.auroc([3, 2, 1, 0], labels) == 0.0
  assert metrics.image_metrics([0, 1, 2, 3], labels)['fpr_at_95_tpr'] == 0.0


def test_bad_input():
  with pytest.raises(VaeQcError, match='both normal'):
    metrics.auroc([1, 2], [1, 1])
  with pytest.raises(VaeQcError, match='not finite'):
    metrics.auroc([1, np.nan], [0, 1])
  with pytest.raises(VaeQcError, match='differ'):
    metrics.auroc([1, 2, 3], [0, 1])


def test_study_names_the_images_whose_scores_are_not_finite():
  from vae_qc import study  # pylint: disable=g-import-not-at-top
  ids = [f'warping/{i:03d}.png' for i in range(8)]
  values = {'neg_elbo': np.r_[np.arange(6.0), np.nan, 1.0], 'map_max': np.arange(8.0)}
  with pytest.raises(VaeQcError, match=r'non-finite scores .*\(neg_elbo: warping/006\.png\)'
                                       r'.* training is not repeated'):
    study._check_finite(values, ids)  # pylint: disable=protected-access
  values['map_max'][:] = np.inf
  with pytest.raises(VaeQcError,
                     match=r'map_max: warping/000\.png, .*warping/004\.png \(\+3 more\)'):
    study._check_finite(values, ids)  # pylint: disable=protected-access
  study._check_finite({'neg_elbo': np.arange(8.0)}, ids)  # pylint: disable=protected-access
