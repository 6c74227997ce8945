"""Decision thresholds on anomaly scores, chosen on a validation split and recorded.

* ``normal_quantile``: the q-quantile of the scores of normal validation images (needs no
  defect examples; expected false-positive rate ≈ 1 − q).
* ``f1_adaptive``: the threshold that maximises F1 on a labelled validation split.

An image is flagged anomalous when its score >= the threshold.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vae_qc import metrics
from vae_qc.errors import ConfigError

METHODS = ('normal_quantile', 'f1_adaptive', 'none')
SOURCES = ('train', 'test')


def check(threshold_cfg) -> None:
  if threshold_cfg.method not in METHODS:
    raise ConfigError(f'config.threshold.method must be one of {", ".join(METHODS)}, got '
                      f'{threshold_cfg.method!r}.')
  if threshold_cfg.val_source not in SOURCES:
    raise ConfigError(f"config.threshold.val_source must be 'train' or 'test', got "
                      f'{threshold_cfg.val_source!r}.')
  if threshold_cfg.method == 'f1_adaptive' and threshold_cfg.val_source != 'test':
    raise ConfigError("config.threshold.method='f1_adaptive' needs labelled validation "
                      "images: set config.threshold.val_source='test'.")
  if not 0.0 < threshold_cfg.quantile < 1.0 or not 0.0 < threshold_cfg.pixel_quantile < 1.0:
    raise ConfigError('config.threshold.quantile and pixel_quantile must be in (0, 1).')
  if threshold_cfg.method != 'none' and not 0.0 < threshold_cfg.val_fraction < 1.0:
    raise ConfigError(f'config.threshold.val_fraction must be in (0, 1), got '
                      f'{threshold_cfg.val_fraction}.')


def split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded split of ``labels`` [N] into (rest, validation) index arrays, stratified by label."""
  rng = np.random.default_rng([seed, 23])
  val = []
  for value in np.unique(labels):
    members = rng.permutation(np.nonzero(labels == value)[0])
    val.append(members[:max(1, int(round(fraction * len(members))))])
  val = np.sort(np.concatenate(val))
  rest = np.setdiff1d(np.arange(len(labels)), val)
  return rest, val


def choose(method: str, val_scores: np.ndarray, val_labels: np.ndarray | None,
           quantile: float) -> float:
  """The threshold of ``method`` from validation scores [N] (and labels for f1_adaptive)."""
  if method == 'normal_quantile':
    normal = val_scores if val_labels is None else val_scores[val_labels == 0]
    return float(np.quantile(normal, quantile))
  if method == 'f1_adaptive':
    return metrics.f1_max(val_scores, val_labels)[1]
  raise ConfigError(f'no threshold for method {method!r}.')


def at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
  """Precision, recall, F1 and false-positive rate of the verdicts score >= threshold."""
  pred = scores >= threshold
  tp = int(np.sum(pred & (labels == 1)))
  fp = int(np.sum(pred & (labels == 0)))
  fn = int(np.sum(~pred & (labels == 1)))
  precision = tp / max(tp + fp, 1)
  recall = tp / max(tp + fn, 1)
  return {'precision': precision, 'recall': recall,
          'f1': 2 * precision * recall / max(precision + recall, 1e-12),
          'fpr': fp / max(int(np.sum(labels == 0)), 1)}
