"""Figures (matplotlib, Agg): ROC curves, score histograms, reconstruction grids."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from vae_qc import metrics


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def roc_curves(score_values: dict[str, np.ndarray], labels: np.ndarray, path: str,
               title: str = '') -> str:
  """One ROC curve per score, AUROC in the legend."""
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  for name, values in score_values.items():
    fpr, tpr, _ = metrics.roc_curve(values, labels)
    ax.plot(fpr, tpr, label=f'{name} (AUROC {metrics.auroc(values, labels):.3f})')
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set(xlabel='false-positive rate', ylabel='true-positive rate', title=title or 'ROC')
  ax.legend(fontsize=8, loc='lower right')
  return _save(fig, path)


def histograms(score_values: dict[str, np.ndarray], labels: np.ndarray, path: str,
               thresholds: dict[str, float] | None = None) -> str:
  """Normal vs anomalous score histograms, one panel per score."""
  n = len(score_values)
  fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3), squeeze=False)
  for ax, (name, values) in zip(axes[0], score_values.items()):
    bins = np.histogram_bin_edges(values, bins=40)
    ax.hist(values[labels == 0], bins=bins, alpha=0.6, density=True, label='normal')
    ax.hist(values[labels == 1], bins=bins, alpha=0.6, density=True, label='anomalous')
    if thresholds and name in thresholds:
      ax.axvline(thresholds[name], color='k', ls='--', lw=1, label='threshold')
    ax.set(title=name, xlabel='score (bigger = more anomalous)')
    ax.legend(fontsize=7)
  return _save(fig, path)


def reconstruction_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str) -> str:
  """Rows of (label, inputs [n, H, W, C], reconstructions [n, H, W, C]); each image shows
  input | reconstruction | |difference|."""
  n = max(len(x) for _, x, _ in rows)
  fig, axes = plt.subplots(len(rows), 3 * n, figsize=(1.1 * 3 * n, 1.3 * len(rows)),
                           squeeze=False)
  for r, (label, inputs, recons) in enumerate(rows):
    for i in range(n):
      panels = ([inputs[i], recons[i], np.abs(inputs[i] - recons[i])] if i < len(inputs)
                else [None] * 3)
      for j, im in enumerate(panels):
        ax = axes[r, 3 * i + j]
        ax.axis('off')
        if im is None:
          continue
        im = np.clip(im, 0, 1)
        ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap='gray' if j < 2 else 'magma',
                  vmin=0, vmax=1)
        if r == 0:
          ax.set_title(['input', 'recon', '|diff|'][j], fontsize=7)
    axes[r, 0].text(-0.3, 0.5, label, transform=axes[r, 0].transAxes, ha='right', va='center',
                    fontsize=8)
  return _save(fig, path)


def roc_per_group(values: np.ndarray, labels: np.ndarray, groups: Sequence[str], path: str,
                  score_name: str) -> str:
  """ROC of one score for each anomalous group (defect type) against all normal images."""
  groups = np.asarray(groups)
  fig, ax = plt.subplots(figsize=(4.8, 4.5))
  for g in sorted(set(groups[labels == 1])):
    keep = (labels == 0) | (groups == g)
    fpr, tpr, _ = metrics.roc_curve(values[keep], labels[keep])
    ax.plot(fpr, tpr, label=f'{g} ({metrics.auroc(values[keep], labels[keep]):.3f})')
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set(xlabel='false-positive rate', ylabel='true-positive rate',
         title=f'ROC per defect type ({score_name})')
  ax.legend(fontsize=7, loc='lower right')
  return _save(fig, path)


def anomaly_gallery(rows: Sequence[dict], path: str, map_name: str) -> str:
  """One row per image: input | reconstruction | anomaly map overlay with the ground-truth
  (green) and predicted (red) mask contours. Each row: dict(image [H, W, C],
  reconstruction [H, W, C], map [H, W], gt [H, W] bool or None, pred [H, W] bool, title,
  and optionally map_name: the row's own map, else ``map_name``). Rows of one map share one
  colour scale."""
  fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), squeeze=False)
  names = [r.get('map_name', map_name) for r in rows]
  scale = {n: (min(float(np.percentile(r['map'], 1)) for r, m in zip(rows, names) if m == n),
               max(float(np.percentile(r['map'], 99.5)) for r, m in zip(rows, names) if m == n))
           for n in set(names)}
  for ax_row, r, name in zip(axes, rows, names):
    vmin, vmax = scale[name]
    gray = lambda im: np.clip(im[..., 0] if im.shape[-1] == 1 else im, 0, 1)
    ax_row[0].imshow(gray(r['image']), cmap='gray', vmin=0, vmax=1)
    ax_row[0].set_title(r['title'], fontsize=8)
    ax_row[1].imshow(gray(r['reconstruction']), cmap='gray', vmin=0, vmax=1)
    ax_row[1].set_title('reconstruction', fontsize=8)
    ax_row[2].imshow(gray(r['image']), cmap='gray', vmin=0, vmax=1)
    ax_row[2].imshow(r['map'], cmap='inferno', alpha=0.55, vmin=vmin, vmax=vmax)
    if r.get('gt') is not None and r['gt'].any():
      ax_row[2].contour(r['gt'], levels=[0.5], colors='lime', linewidths=1.0)
    if r['pred'].any():
      ax_row[2].contour(r['pred'], levels=[0.5], colors='red', linewidths=0.8)
    ax_row[2].set_title(f'{name} map: truth green, predicted red', fontsize=8)
    for ax in ax_row:
      ax.axis('off')
  return _save(fig, path)


def sweep_aurocs(per_digit: Sequence[dict], scores: Sequence[str], path: str) -> str:
  """Mean AUROC per anomalous digit, one panel per latent: each score and the paper's.

  ``per_digit``: rows of ``vae_qc.tables.summarize`` (latent, digit, ``<score>_mean``,
  paper_auroc)."""
  latents = sorted({t['latent'] for t in per_digit})
  fig, axes = plt.subplots(1, len(latents), figsize=(5.5 * len(latents), 3.4), squeeze=False)
  for ax, latent in zip(axes[0], latents):
    rows = sorted((t for t in per_digit if t['latent'] == latent), key=lambda t: t['digit'])
    digits = [t['digit'] for t in rows]
    for s in scores:
      ax.plot(digits, [t[f'{s}_mean'] for t in rows], 'o-', ms=4, label=s)
    paper = [t['paper_auroc'] for t in rows]
    if any(p is not None for p in paper):
      ax.plot(digits, [np.nan if p is None else p for p in paper], 'k*--', ms=6, label='paper')
    ax.axhline(0.5, color='gray', lw=0.6, ls=':')
    ax.set(xlabel='anomalous digit', ylabel='image AUROC', title=f'latent {latent}',
           xticks=digits, ylim=(0, 1.02))
    ax.legend(fontsize=7, loc='lower left')
  return _save(fig, path)
