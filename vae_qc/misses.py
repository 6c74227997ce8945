"""Where a trained print run fails: the lowest-scored test image of each defect kind, scored
again through :func:`vae_qc.load_run` and drawn as input | reconstruction | map with the true
(green) and predicted (red) masks (``experiments/print_misses.py``; README, "Print surfaces")."""
from __future__ import annotations

import csv
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from vae_qc import api
from vae_qc import viz
from vae_qc.errors import DataError


def lowest(workdir: str, kind: str, score: str) -> tuple[str, float]:
  """(test image id, score) of the lowest-scored test image of ``kind`` in the run's scores.csv."""
  path = os.path.join(workdir, 'scores.csv')
  if not os.path.exists(path):
    raise DataError(f'{workdir} has no scores.csv: train and evaluate it first '
                    '(experiments/print_anomaly.py --workdir=...).')
  with open(path) as f:
    rows = list(csv.DictReader(f))
  if rows and score not in rows[0]:
    scores = [k for k in rows[0] if k not in ('id', 'label', 'group', 'verdict',
                                              'threshold_validation')]
    raise DataError(f'{workdir} was not scored with {score!r}; choose --score among '
                    f'{", ".join(scores)}.')
  rows = [r for r in rows if r['group'] == kind and r['label'] == '1']
  if not rows:
    with open(path) as f:
      kinds = sorted({r['group'] for r in csv.DictReader(f) if r['label'] == '1'})
    raise DataError(f'{workdir} has no defective test images of kind {kind!r}; its kinds: '
                    f'{", ".join(kinds)}.')
  row = min(rows, key=lambda r: float(r[score]))
  return row['id'], float(row[score])


def misses(cases: Sequence[tuple[str, str]], out: str, score: str) -> list[dict]:
  """Draws one row per (workdir, kind) into ``out``; returns per row id, score, map, pixels of
  the true mask and how many of them (and of the rest) the run's pixel threshold flags."""
  rows, summary = [], []
  for workdir, kind in cases:
    image_id, value = lowest(workdir, kind, score)
    results = json.load(open(os.path.join(workdir, 'results.json')))
    root, map_name = results['data']['root'], results['pixel']['map']
    threshold = results['pixel'].get('threshold', {}).get('value', np.inf)
    run = api.load_run(workdir)
    mode = 'L' if run.channels == 1 else 'RGB'
    image = np.asarray(Image.open(os.path.join(root, 'test', image_id)).convert(mode),
                       np.float32) / 255
    image = image.reshape(image.shape[:2] + (run.channels,))
    result = run.score(image[None], with_maps=True)
    again = float(result.scores[score][0])
    if not np.isclose(again, value, rtol=1e-4, atol=1e-4):
      raise DataError(f'{image_id} of {workdir} scores {again:.4f} now but {value:.4f} in its '
                      'scores.csv: the test data at ' + root + ' changed since the run.')
    amap = np.asarray(result.maps[map_name][0])
    mask_path = os.path.join(root, 'ground_truth', kind,
                             os.path.splitext(os.path.basename(image_id))[0] + '_mask.png')
    truth = (np.asarray(Image.open(mask_path).convert('L')) > 0
             if os.path.exists(mask_path) else None)
    predicted = amap >= threshold
    label = os.path.basename(os.path.normpath(workdir))
    rows.append(dict(image=image, reconstruction=np.asarray(result.maps['reconstruction'][0]),
                     map=amap, gt=truth, pred=predicted,
                     title=f'{label}: {kind}, lowest {score} ({value:.2f})'))
    summary.append(dict(
        workdir=workdir, kind=kind, id=image_id, score=value, map=map_name,
        mask_pixels=int(truth.sum()) if truth is not None else None,
        flagged_in_mask=int((predicted & truth).sum()) if truth is not None else None,
        flagged_outside=int((predicted & ~truth).sum() if truth is not None
                            else predicted.sum())))
  viz.anomaly_gallery(rows, out, results['pixel']['map'])
  return summary
