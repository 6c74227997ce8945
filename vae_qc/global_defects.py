"""Images wrong everywhere: good images changed as a whole, to check that a run flags them.

A defect of the print or photo sets changes a region of a good surface. A camera, a light or
a line can change the whole frame instead: a lens out of focus, sensor noise, flat or harsh
light, a negative, an empty frame, a surface fed in turned by 90°. :func:`make` makes each
such variant of good images and :func:`evaluate` scores them with a run beside the images
they came from: the image AUROC of each variant against them and the share of each that the
run's threshold flags (``experiments/global_defects.py``; docs/print_study.md, "Images wrong
everywhere"). 'turned' is a defect only for a surface with a direction (layer lines, brick
courses), not for an isotropic texture such as gravel.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import scipy.ndimage

from vae_qc import metrics
from vae_qc.errors import DataError


def _contrast(x: np.ndarray, factor: float) -> np.ndarray:
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return np.clip(factor * (x - mean) + mean, 0.0, 1.0)


# name: (what it stands for, fn(images [N, H, W, C] float in [0, 1], rng) -> the same shape)
VARIANTS: dict[str, tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    'blur': ('out of focus: a Gaussian blur of σ = 1.5 px',
             lambda x, rng: scipy.ndimage.gaussian_filter(x, (0, 1.5, 1.5, 0), mode='reflect')),
    'noise': ('sensor noise: Gaussian, sd 0.05 of the grey range',
              lambda x, rng: np.clip(x + rng.normal(0.0, 0.05, x.shape), 0.0, 1.0)),
    'low_contrast': ('flat light: contrast halved about the image mean',
                     lambda x, rng: _contrast(x, 0.5)),
    'high_contrast': ('harsh light: contrast doubled about the image mean, clipped',
                      lambda x, rng: _contrast(x, 2.0)),
    'negative': ('a negative: 1 − x', lambda x, rng: 1.0 - x),
    'blank': ('an empty frame: uniform grey 0.5', lambda x, rng: np.full_like(x, 0.5)),
    'uniform_noise': ('no surface: uniform noise', lambda x, rng: rng.random(x.shape)),
    'turned': ('the surface turned by 90°', lambda x, rng: np.rot90(x, axes=(1, 2))),
}


def make(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
  """{variant: [N, H, W, C] float32} of good ``images`` [N, H, W, C] in [0, 1] (a square image
  stays square when turned; others swap H and W). Deterministic in ``seed``."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or not len(images):
    raise DataError(f'global defects need images [N, H, W, C], N ≥ 1; got shape '
                    f'{list(images.shape)}.')
  out = {}
  for i, (name, (_, fn)) in enumerate(VARIANTS.items()):
    rng = np.random.default_rng([seed, i])
    out[name] = np.ascontiguousarray(fn(images, rng), dtype=np.float32)
  return out


def evaluate(run, images: np.ndarray, seed: int = 0) -> dict[str, Any]:
  """Scores good ``images`` [N, H, W, C] and each variant of them with ``run`` (a
  ``vae_qc.api.Run``): {'score', 'threshold', 'good_flagged', 'variants': {name: {'auroc',
  'flagged', 'what'}}}: the image AUROC of the variant against the images it came from by the
  run's threshold score (its first score where it has no threshold) and the share of each
  set at or above the threshold (None without one)."""
  name = run.threshold['score'] if run.threshold else run.scorer.settings.scores[0]
  value = run.threshold['value'] if run.threshold else None
  good = np.asarray(run.score(images).scores[name], np.float64)
  flagged = lambda s: None if value is None else float(np.mean(s >= value))
  out = {'score': name, 'threshold': value, 'good_flagged': flagged(good), 'variants': {}}
  for variant, x in make(images, seed).items():
    s = np.asarray(run.score(x).scores[name], np.float64)
    labels = np.r_[np.zeros(len(good)), np.ones(len(s))]
    out['variants'][variant] = {'auroc': metrics.auroc(np.r_[good, s], labels),
                                'flagged': flagged(s), 'what': VARIANTS[variant][0]}
  return out
