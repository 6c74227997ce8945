"""Anomaly-detection metrics in numpy.

Convention: ``scores`` are bigger-is-more-anomalous, ``labels`` are 1 for anomalous and 0
for normal. All functions take 1-D arrays ``[N]`` and return Python floats, and agree with
scikit-learn (tests compare them), without depending on it. Pixel-level metrics
(``pixel_auroc``, ``aupro``) take anomaly maps and masks ``[N, H, W]``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from vae_qc.errors import VaeQcError


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  if scores.shape != labels.shape:
    raise VaeQcError(f'scores {scores.shape} and labels {labels.shape} differ in length.')
  if not np.all(np.isfinite(scores)):
    raise VaeQcError(f'{int(np.sum(~np.isfinite(scores)))} scores are not finite; '
                     'metrics need finite scores.')
  labels = labels.astype(bool)
  if labels.all() or (~labels).all():
    raise VaeQcError('metrics need both normal (0) and anomalous (1) examples; '
                     f'got {int(labels.sum())} anomalous of {labels.size}.')
  return scores, labels


def _curve(scores, labels):
  """Counts at each distinct threshold, thresholds decreasing.

  Returns (tps [T], fps [T], thresholds [T]) where an example is predicted anomalous when
  its score >= threshold.
  """
  order = np.argsort(-scores, kind='mergesort')
  s, y = scores[order], labels[order]
  distinct = np.where(np.diff(s))[0]
  idx = np.r_[distinct, y.size - 1]
  tps = np.cumsum(y)[idx].astype(np.float64)
  fps = (idx + 1 - tps).astype(np.float64)
  return tps, fps, s[idx]


def roc_curve(scores, labels):
  """ROC curve: (fpr [T+1], tpr [T+1], thresholds [T]) starting at (0, 0)."""
  scores, labels = _check(scores, labels)
  tps, fps, thr = _curve(scores, labels)
  tpr = np.r_[0.0, tps / tps[-1]]
  fpr = np.r_[0.0, fps / fps[-1]]
  return fpr, tpr, thr


def auroc(scores, labels) -> float:
  """Area under the ROC curve (ties count one half, as in sklearn's roc_auc_score)."""
  fpr, tpr, _ = roc_curve(scores, labels)
  return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(scores, labels):
  """(precision [T], recall [T], thresholds [T]) for thresholds decreasing."""
  scores, labels = _check(scores, labels)
  tps, fps, thr = _curve(scores, labels)
  precision = tps / (tps + fps)
  recall = tps / tps[-1]
  return precision, recall, thr


def auprc(scores, labels) -> float:
  """Average precision, sum_n (R_n - R_{n-1}) P_n (sklearn's average_precision_score)."""
  precision, recall, _ = precision_recall_curve(scores, labels)
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(scores, labels) -> tuple[float, float]:
  """Best F1 over all thresholds: (f1, threshold). Predict anomalous when score >= threshold."""
  precision, recall, thr = precision_recall_curve(scores, labels)
  denom = precision + recall
  f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
  i = int(np.argmax(f1))
  return float(f1[i]), float(thr[i])


def fpr_at_tpr(scores, labels, tpr_level: float = 0.95) -> float:
  """False-positive rate at the first threshold whose TPR reaches ``tpr_level``."""
  fpr, tpr, _ = roc_curve(scores, labels)
  i = int(np.searchsorted(tpr, tpr_level - 1e-12, side='left'))
  return float(fpr[min(i, fpr.size - 1)])


def image_metrics(scores, labels) -> dict[str, float]:
  """All image-level metrics of one score: auroc, auprc, f1_max, fpr_at_95_tpr."""
  f1, thr = f1_max(scores, labels)
  return {
      'auroc': auroc(scores, labels),
      'auprc': auprc(scores, labels),
      'f1_max': f1,
      'f1_max_threshold': thr,
      'fpr_at_95_tpr': fpr_at_tpr(scores, labels, 0.95),
  }


PIXEL_AUROC_MAX_PIXELS = 5_000_000


def _check_maps(maps, masks) -> tuple[np.ndarray, np.ndarray]:
  maps = np.asarray(maps)
  masks = np.asarray(masks).astype(bool)
  if maps.ndim != 3 or maps.shape != masks.shape:
    raise VaeQcError(f'maps and masks must both be [N, H, W]; got {maps.shape} and '
                     f'{masks.shape}.')
  return maps, masks


def pixel_auroc(maps, masks, max_pixels: int = PIXEL_AUROC_MAX_PIXELS) -> float:
  """AUROC of anomaly maps [N, H, W] against ground-truth masks [N, H, W] over all pixels.

  Above ``max_pixels`` pixels, ``max_pixels`` of them are drawn uniformly with replacement by
  a generator seeded with 0, so the value is deterministic; its standard error is then about
  0.5 / sqrt(number of sampled defect pixels).
  """
  maps, masks = _check_maps(maps, masks)
  scores, labels = maps.reshape(-1), masks.reshape(-1)
  if scores.size > max_pixels:
    idx = np.random.default_rng(0).integers(0, scores.size, max_pixels)
    scores, labels = scores[idx], labels[idx]
  return auroc(scores, labels)


def aupro(maps, masks, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
  """Normalised area under the per-region-overlap (PRO) curve, as in MVTec AD.

  Regions are the connected components (8-connectivity) of each ground-truth mask. A pixel is
  predicted anomalous when its map value >= threshold t; then
  PRO(t) = mean over regions of |predicted ∩ region| / |region| and
  FPR(t) = |predicted ∩ normal pixels| / |normal pixels|. The curve (from (0, 0), linear between
  operating points) is integrated over FPR in [0, fpr_limit] and divided by ``fpr_limit``, so a
  perfect map scores 1.0 and a random one about fpr_limit / 2.

  Args:
    maps: [N, H, W] anomaly maps (bigger = more anomalous), finite.
    masks: [N, H, W] ground truth, non-zero = defect; needs >= 1 region and >= 1 normal pixel.
    fpr_limit: upper FPR bound, in (0, 1].
    num_thresholds: None evaluates every distinct map value (exact; sorts all pixels);
      an int evaluates that many thresholds evenly spaced from the smallest to the largest
      value, in O(N H W) time without sorting (an approximation of the exact curve).

  Returns:
    AUPRO in [0, 1].
  """
  maps, masks = _check_maps(maps, masks)
  if not 0 < fpr_limit <= 1:
    raise VaeQcError(f'fpr_limit must be in (0, 1], got {fpr_limit}.')
  scores = maps.reshape(-1).astype(np.float64)
  if not np.all(np.isfinite(scores)):
    raise VaeQcError(f'{int(np.sum(~np.isfinite(scores)))} map values are not finite.')
  regions = np.zeros(masks.shape, np.int64)
  n_regions = 0
  for i, mask in enumerate(masks):
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
    regions[i] = np.where(labelled > 0, labelled + n_regions, 0)
    n_regions += n
  normal = ~masks.reshape(-1)
  if n_regions == 0 or normal.all() or not normal.any():
    raise VaeQcError('aupro needs at least one defect region and one normal pixel; got '
                     f'{n_regions} regions and {int(normal.sum())} normal pixels.')
  regions = regions.reshape(-1)
  sizes = np.bincount(regions, minlength=n_regions + 1)
  weight = np.r_[0.0, 1.0 / (sizes[1:] * n_regions)][regions]  # Sums to 1 over regions.
  if num_thresholds is None:
    order = np.argsort(-scores, kind='mergesort')
    last = np.r_[np.where(np.diff(scores[order]))[0], scores.size - 1]
    pro = np.cumsum(weight[order])[last]
    fp = np.cumsum(normal[order])[last]
  else:
    if num_thresholds < 2:
      raise VaeQcError(f'num_thresholds must be >= 2, got {num_thresholds}.')
    thresholds = np.linspace(scores.min(), scores.max(), num_thresholds)
    # Index of the largest threshold <= each score; count from the top threshold down.
    bins = np.searchsorted(thresholds, scores, side='right') - 1
    pro = np.cumsum(np.bincount(bins, weight, num_thresholds)[::-1])
    fp = np.cumsum(np.bincount(bins, normal, num_thresholds)[::-1])
  fpr = np.r_[0.0, fp / normal.sum()]
  pro = np.r_[0.0, np.minimum(pro, 1.0)]
  i = int(np.searchsorted(fpr, fpr_limit, side='right'))  # fpr[:i] <= fpr_limit.
  x, y = fpr[:i], pro[:i]
  if i < fpr.size:
    y_limit = pro[i - 1] + (pro[i] - pro[i - 1]) * (fpr_limit - fpr[i - 1]) / (
        fpr[i] - fpr[i - 1])
    x, y = np.r_[x, fpr_limit], np.r_[y, y_limit]
  return float(np.trapezoid(y, x) / fpr_limit)


def metrics_per_defect(scores, labels, defect_types) -> dict[str, dict[str, float]]:
  """``image_metrics`` of every defect type, on the good images plus that type's images.

  Args:
    scores: [N] image scores (bigger = more anomalous).
    labels: [N] 1 for defect, 0 for good.
    defect_types: N names; those of defect images name the groups.

  Returns:
    {defect type: image_metrics dict}, sorted by defect type.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1).astype(bool)
  types = np.asarray(defect_types, dtype=object).reshape(-1)
  if not scores.shape == labels.shape == types.shape:
    raise VaeQcError(f'scores {scores.shape}, labels {labels.shape} and defect_types '
                     f'{types.shape} differ in length.')
  return {kind: image_metrics(scores[~labels | (types == kind)],
                              labels[~labels | (types == kind)])
          for kind in sorted(set(types[labels]))}


def pixel_metrics_per_defect(maps, masks, use, labels, defect_types,
                             on_set: Callable[[], None] | None = None
                             ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Pixel AUROC and AUPRO of maps [N, H, W] against masks [N, H, W] on the images ``use``
  ([N] bool: those whose masks count): over all of them, and for every defect type on the
  good images plus that type's (a type whose masks are all empty is left out).

  labels: [N] 1 for defect, 0 for good; defect_types: N names. ``on_set`` is called after
  each set (a progress line). Returns ({'auroc', 'aupro'}, {type: {'auroc', 'aupro'}}).
  """
  maps, masks = np.asarray(maps), np.asarray(masks)
  labels, types = np.asarray(labels), np.asarray(defect_types)
  use = np.asarray(use, bool)

  def figures(keep):
    return {'auroc': pixel_auroc(maps[keep], masks[keep]), 'aupro': aupro(maps[keep], masks[keep])}

  overall = figures(use)
  if on_set:
    on_set()
  per = {}
  for kind in sorted(set(types[labels == 1])):
    keep = use & ((labels == 0) | (types == kind))
    if np.any(masks[keep]):
      per[kind] = figures(keep)
    if on_set:
      on_set()
  return overall, per
