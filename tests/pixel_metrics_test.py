"""Tests of pixel-level metrics (pixel AUROC, AUPRO) and per-defect image metrics."""
import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from vae_qc import metrics
from vae_qc.errors import VaeQcError


def hand_case():
  """One 4x4 image: region A (2 px), region B (4 px), 10 normal pixels.

  Thresholds from the top: 0.9 -> (FPR 0, PRO (1/2 + 0)/2); 0.8 -> (0, (1/2 + 2/4)/2);
  0.7 -> (0.1, 0.5); 0.6 -> (0.2, 0.5); 0.5 -> (0.2, 0.75); 0.3 -> (0.2, 1); 0.1 -> (1, 1).
  Area up to FPR 0.3: 0.1 * 0.5 + 0.1 * 0.5 + 0.1 * 1 = 0.2, normalised 0.2 / 0.3 = 2/3.
  Up to 0.15: 0.1 * 0.5 + 0.05 * 0.5 = 0.075, normalised 0.5.
  """
  masks = np.zeros((1, 4, 4), bool)
  masks[0, 0, 0:2] = True  # A.
  masks[0, 2:4, 2:4] = True  # B.
  maps = np.full((1, 4, 4), 0.1)
  maps[0, 0, 0:2] = [0.9, 0.5]
  maps[0, 2, 2:4] = [0.8, 0.8]
  maps[0, 3, 2:4] = [0.3, 0.3]
  maps[0, 1, 3] = 0.7
  maps[0, 3, 0] = 0.6
  return maps, masks


def test_aupro_hand_computed():
  maps, masks = hand_case()
  assert metrics.aupro(maps, masks) == pytest.approx(2 / 3)
  assert metrics.aupro(maps, masks, fpr_limit=0.15) == pytest.approx(0.5)


def test_aupro_perfect_constant_and_reversed():
  maps, masks = hand_case()
  assert metrics.aupro(masks.astype(float), masks) == pytest.approx(1.0)
  # One operating point (everything anomalous): the chord (0, 0)-(1, 1) -> 0.3 / 2.
  assert metrics.aupro(np.zeros_like(maps), masks) == pytest.approx(0.15)
  assert metrics.aupro(-masks.astype(float), masks) == pytest.approx(0.0)


def test_aupro_averages_regions_not_pixels():
  masks = np.zeros((2, 8, 8), bool)
  masks[0, :4, :4] = True  # 16 px, found.
  masks[1, 0, 0] = True  # 1 px, missed.
  maps = np.where(masks, 1.0, 0.5)
  maps[1, 0, 0] = 0.0
  # PRO is 0.5 until every normal pixel is flagged, whereas pixel TPR would be 16/17.
  assert metrics.aupro(maps, masks) == pytest.approx(0.5)


def test_aupro_regions_are_8_connected():
  masks = np.zeros((1, 4, 4), bool)
  masks[0, 0, 0:2] = masks[0, 1, 2] = True  # Diagonal neighbours: one region of 3 px.
  maps = np.zeros((1, 4, 4))
  maps[0, 1, 2] = 1.0
  # PRO 1/3 at FPR 0, then the chord to (1, 1): 0.3 / 3 + (2 / 3) * 0.3**2 / 2 = 0.13.
  # (With 4-connectivity PRO would start at (0 + 1) / 2.)
  assert metrics.aupro(maps, masks) == pytest.approx(0.13 / 0.3)


def reference_aupro(maps, masks, fpr_limit):
  """Direct definition: loop over thresholds and regions."""
  regions = []
  for i, mask in enumerate(masks):
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
    regions += [(i, labelled == r) for r in range(1, n + 1)]
  points = [(0.0, 0.0)]
  for t in np.unique(maps)[::-1]:
    predicted = maps >= t
    pro = np.mean([predicted[i][region].mean() for i, region in regions])
    points.append((predicted[~masks].mean(), pro))
  fpr, pro = np.array(points).T
  x = np.linspace(0, fpr_limit, 20001)
  return np.trapezoid(np.interp(x, fpr, pro), x) / fpr_limit


def test_aupro_matches_reference_and_binned_version():
  rng = np.random.default_rng(0)
  masks = np.zeros((3, 12, 12), bool)
  masks[0, 2:5, 3:9] = True
  masks[0, 8:11, 8:10] = True
  masks[2, 5:9, 1:4] = True
  maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)  # Ties included.
  exact = metrics.aupro(maps, masks)
  assert exact == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-4)
  assert metrics.aupro(maps, masks, num_thresholds=500) == pytest.approx(exact, abs=0.01)
  assert metrics.aupro(maps, masks, fpr_limit=1.0) == pytest.approx(
      reference_aupro(maps, masks, 1.0), abs=1e-4)


def test_aupro_errors():
  maps, masks = hand_case()
  with pytest.raises(VaeQcError, match='region'):
    metrics.aupro(maps, np.zeros_like(masks))
  with pytest.raises(VaeQcError, match=r'\[N, H, W\]'):
    metrics.aupro(maps[0], masks[0])
  with pytest.raises(VaeQcError, match='fpr_limit'):
    metrics.aupro(maps, masks, fpr_limit=0)
  with pytest.raises(VaeQcError, match='finite'):
    metrics.aupro(np.full_like(maps, np.nan), masks)


def test_pixel_auroc_matches_sklearn_and_subsamples_deterministically():
  rng = np.random.default_rng(1)
  masks = rng.random((4, 20, 20)) < 0.1
  maps = rng.random(masks.shape) + 0.3 * masks
  expected = skm.roc_auc_score(masks.reshape(-1), maps.reshape(-1))
  assert metrics.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
  sub = metrics.pixel_auroc(maps, masks, max_pixels=1000)
  assert sub == metrics.pixel_auroc(maps, masks, max_pixels=1000)
  assert sub == pytest.approx(expected, abs=0.05)


def test_metrics_per_defect():
  scores = np.array([0.1, 0.2, 0.3, 0.9, 0.15, 0.8, 0.25])
  labels = np.array([0, 0, 0, 1, 1, 1, 1])
  types = ['good', 'good', 'good', 'blob', 'blob', 'scratch', 'scratch']
  result = metrics.metrics_per_defect(scores, labels, types)
  assert list(result) == ['blob', 'scratch']
  assert result['blob'] == metrics.image_metrics(scores[[0, 1, 2, 3, 4]], [0, 0, 0, 1, 1])
  assert result['scratch']['auroc'] == pytest.approx(
      skm.roc_auc_score([0, 0, 0, 1, 1], scores[[0, 1, 2, 5, 6]]))
  with pytest.raises(VaeQcError, match='differ'):
    metrics.metrics_per_defect(scores, labels, types[:-1])


def test_pixel_metrics_per_defect():
  """Overall on the images with masks, and per type on the good images plus that type's; a
  type whose masks are all empty is left out."""
  rng = np.random.default_rng(3)
  masks = np.zeros((6, 8, 8), bool)
  masks[2, 2:5, 2:5] = masks[3, 4:7, 1:4] = True  # blob, blob; image 4 (scratch) has no mask
  maps = rng.random(masks.shape) + 0.5 * masks
  labels = np.array([0, 0, 1, 1, 1, 0])
  types = ['good', 'good', 'blob', 'blob', 'scratch', 'good']
  use = np.array([True, True, True, True, True, False])
  calls = []
  overall, per = metrics.pixel_metrics_per_defect(maps, masks, use, labels, types,
                                                  on_set=lambda: calls.append(1))
  assert overall == {'auroc': metrics.pixel_auroc(maps[:5], masks[:5]),
                     'aupro': metrics.aupro(maps[:5], masks[:5])}
  assert list(per) == ['blob'] and len(calls) == 3
  assert per['blob']['auroc'] == pytest.approx(
      skm.roc_auc_score(masks[:4].reshape(-1), maps[:4].reshape(-1)))
  assert per['blob']['aupro'] == metrics.aupro(maps[:4], masks[:4])
