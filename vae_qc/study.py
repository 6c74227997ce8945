"""An anomaly-detection study end to end: data → training → scores → metrics → report.

``train_and_evaluate(config, workdir)`` writes the workdir contract of DESIGN.md:
config.json, metrics.jsonl, checkpoints/, results.json, scores.csv and plots/. Re-running the
same command resumes training from the last checkpoint and (re)writes the report.
"""
from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from vae_qc import data as data_lib
from vae_qc import evaluate
from vae_qc import metrics
from vae_qc import train as train_lib
from vae_qc import viz
from vae_qc import workdir as wd


def report(workdir: str, config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
           scorer: evaluate.Scorer, variables, extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Scores the test set and writes results.json, scores.csv and plots/. Returns results."""
  t0 = time.time()
  values = scorer.scores(variables, dataset.test_images)
  eval_s = time.time() - t0
  labels = dataset.test_labels
  results: dict[str, Any] = {
      'scores': evaluate.score_metrics(values, labels),
      'n_normal': int(np.sum(labels == 0)),
      'n_anomalous': int(np.sum(labels == 1)),
      'data': dataset.info,
      'eval': {'seconds': eval_s, **{k: v for k, v in vars(scorer.settings).items()}},
  }
  groups = sorted(set(g for g, y in zip(dataset.test_groups, labels) if y == 1))
  if len(groups) > 1:
    results['per_group'] = metrics.metrics_per_group(values, labels, dataset.test_groups) \
        if hasattr(metrics, 'metrics_per_group') else {}
  results.update(extra or {})
  names = list(values)
  wd.write_csv(os.path.join(workdir, 'scores.csv'), ['id', 'label', 'group'] + names,
               ([i, int(y), g] + [values[n][j] for n in names]
                for j, (i, y, g) in enumerate(zip(dataset.test_ids, labels, dataset.test_groups))))
  wd.write_json(os.path.join(workdir, 'results.json'), results)
  _plots(workdir, config, dataset, scorer, variables, values)
  return results


def _plots(workdir, config, dataset, scorer, variables, values):
  plots = os.path.join(workdir, 'plots')
  labels = dataset.test_labels
  viz.roc_curves(values, labels, os.path.join(plots, 'roc.png'))
  viz.histograms(values, labels, os.path.join(plots, 'histograms.png'))
  n = config.eval.num_plot_images
  first = config.eval.scores[0]
  rows = []
  for label, name in ((0, 'normal'), (1, 'anomalous')):
    idx = np.nonzero(labels == label)[0]
    order = idx[np.argsort(values[first][idx])]
    for tag, pick in (('least', order[:n]), ('most', order[::-1][:n])):
      x = dataset.test_images[pick]
      rows.append((f'{name}\n{tag} {first}', x, scorer.maps(variables, x)['reconstruction']))
  viz.reconstruction_grid(rows, os.path.join(plots, 'reconstructions.png'))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Runs the study of ``config`` in ``workdir``; returns the results dict."""
  settings = evaluate.EvalSettings.from_config(config.eval)  # fail on bad eval config early
  train_lib.prepare_workdir(workdir, config, allow_config_change)
  dataset = data_lib.load(config.data)
  model_cfg = train_lib.model_config(config, dataset.image_shape)
  evaluate.check_images(dataset.train_images, model_cfg.image_shape, 'training images')
  t0 = time.time()
  state = train_lib.train(config, workdir, dataset.train_images, model_cfg)
  train_s = time.time() - t0
  scorer = evaluate.Scorer(model_cfg, settings)
  results = report(workdir, config, dataset, scorer, jax.device_get(state.variables),
                   extra={'train': {'steps': int(state.step), 'seconds': train_s,
                                    'skipped_updates': int(state.num_skipped)}})
  for name, m in results['scores'].items():
    logging.info('%-14s AUROC %.4f  AUPRC %.4f  F1-max %.4f  FPR@95 %.4f', name, m['auroc'],
                 m['auprc'], m['f1_max'], m['fpr_at_95_tpr'])
  return results
