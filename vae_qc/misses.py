"""Where a trained print run fails: the lowest-scored test image of each defect kind, scored
again through :func:`vae_qc.load_run` and drawn as input | reconstruction | map with the true
(green) and predicted (red) masks (``experiments/print_misses.py``; README, "Print surfaces")."""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from vae_qc import api
from vae_qc import data as data_lib
from vae_qc import predict
from vae_qc import viz
from vae_qc import workdir as wd
from vae_qc.errors import DataError


def lowest(workdir: str, kind: str, score: str) -> tuple[str, float]:
  """(test image id, score) of the lowest-scored test image of ``kind`` in the run's scores.csv."""
  path = os.path.join(workdir, 'scores.csv')
  if not os.path.exists(path):
    raise DataError(f'{workdir} has no scores.csv: train and evaluate it first '
                    '(experiments/print_anomaly.py --workdir=...).')
  scored = list(wd.read_json(os.path.join(workdir, 'results.json'))['scores'])
  if score not in scored:
    raise DataError(f'{workdir} was not scored with {score!r}; choose --score among '
                    f'{", ".join(scored)}.')
  with open(path) as f:
    defective = [r for r in csv.DictReader(f) if r['label'] == '1']
  rows = [r for r in defective if r['group'] == kind]
  if not rows:
    kinds = sorted({r['group'] for r in defective})
    raise DataError(f'{workdir} has no defective test images of kind {kind!r}; its kinds: '
                    f'{", ".join(kinds)}.')
  row = min(rows, key=lambda r: float(r[score]))
  return row['id'], float(row[score])


def misses(cases: Sequence[tuple[str, str]], out: str, score: str) -> list[dict]:
  """Draws one row per (workdir, kind) into ``out``; returns per row id, score, map, pixels of
  the true mask and how many of them (and of the rest) the run's pixel threshold flags.

  Each run's test images and masks are read by the study's own loader from its saved config,
  so they are the pixels the run was evaluated on."""
  rows, summary, loaded = [], [], {}
  for workdir, kind in cases:
    image_id, value = lowest(workdir, kind, score)
    pixel = wd.read_json(os.path.join(workdir, 'results.json')).get('pixel')
    if pixel is None:
      raise DataError(f'{workdir} has no per-pixel map results: misses are drawn for print '
                      'runs evaluated with masks (experiments/print_anomaly.py).')
    map_name, threshold = pixel['map'], pixel.get('threshold', {}).get('value', np.inf)
    if workdir not in loaded:  # a run's data and model are read once, however many kinds
      loaded[workdir] = (data_lib.load(predict.read_config(workdir).data),
                         api.load_run(workdir))
    dataset, run = loaded[workdir]
    j = dataset.test_ids.index(image_id)
    image = dataset.test_images[j]
    result = run.score(image[None], with_maps=True)
    again = float(result.scores[score][0])
    if not np.isclose(again, value, rtol=1e-4, atol=1e-4):
      raise DataError(f'{image_id} of {workdir} scores {again:.4f} now but {value:.4f} in its '
                      'scores.csv: its test data changed since the run.')
    amap = np.asarray(result.maps[map_name][0])
    truth = dataset.test_masks[j] if dataset.test_has_mask[j] else None
    predicted = amap >= threshold
    label = os.path.basename(os.path.normpath(workdir))
    rows.append(dict(image=image, reconstruction=np.asarray(result.maps['reconstruction'][0]),
                     map=amap, map_name=map_name, gt=truth, pred=predicted,
                     title=f'{label}: {kind}, lowest {score} ({value:.2f})'))
    summary.append(dict(
        workdir=workdir, kind=kind, id=image_id, score=value, map=map_name,
        mask_pixels=int(truth.sum()) if truth is not None else None,
        flagged_in_mask=int((predicted & truth).sum()) if truth is not None else None,
        flagged_outside=int((predicted & ~truth).sum() if truth is not None
                            else predicted.sum())))
  viz.anomaly_gallery(rows, out, map_name)
  return summary
