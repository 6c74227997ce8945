"""Where a trained print run fails: the lowest-scored test image of each defect kind, scored
again through :func:`vae_qc.load_run` and drawn as input | reconstruction | map with the true
(green) and predicted (red) masks (``experiments/print_misses.py``; README, "Print surfaces");
and, for a set made by ``vae_qc.data.photo_defects``, how the misses follow the change each
defect made to its pixels (:func:`by_change`)."""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from vae_qc import api
from vae_qc import data as data_lib
from vae_qc import metrics
from vae_qc import predict
from vae_qc import viz
from vae_qc import workdir as wd
from vae_qc.errors import DataError


def _scored_rows(workdir: str, score: str) -> list[dict]:
  """The rows of the run's scores.csv (id, label, group, scores...), after checking that the
  run was scored with ``score`` (its results.json's scores, or the file's columns)."""
  path = os.path.join(workdir, 'scores.csv')
  if not os.path.exists(path):
    raise DataError(f'{workdir} has no scores.csv: train and evaluate it first '
                    '(experiments/print_anomaly.py --workdir=...).')
  with open(path) as f:
    reader = csv.DictReader(f)
    rows, columns = list(reader), reader.fieldnames or []
  results = os.path.join(workdir, 'results.json')
  scored = (list(wd.read_json(results)['scores']) if os.path.exists(results)
            else [k for k in columns if k not in ('id', 'label', 'group')])
  if score not in scored:
    raise DataError(f'{workdir} was not scored with {score!r}; choose --score among '
                    f'{", ".join(scored)}.')
  return rows


def lowest(workdir: str, kind: str, score: str) -> tuple[str, float]:
  """(test image id, score) of the lowest-scored test image of defect ``kind`` in the run's
  scores.csv; for ``kind`` 'good', of the highest-scored good image (the worst false alarm)."""
  every = _scored_rows(workdir, score)
  good = kind == 'good'
  rows = [r for r in every if r['label'] == ('0' if good else '1') and (good or r['group'] == kind)]
  if not rows:
    kinds = sorted({r['group'] for r in every if r['label'] == '1'})
    raise DataError(f'{workdir} has no {"good" if good else "defective"} test images'
                    f'{"" if good else f" of kind {kind!r}"}; its kinds: good, '
                    f'{", ".join(kinds)}.')
  row = (max if good else min)(rows, key=lambda r: float(r[score]))
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
                     title=f'{label}: {kind}, {"highest" if kind == "good" else "lowest"} '
                           f'{score} ({value:.2f})'))
    summary.append(dict(
        workdir=workdir, kind=kind, id=image_id, score=value, map=map_name,
        mask_pixels=int(truth.sum()) if truth is not None else None,
        flagged_in_mask=int((predicted & truth).sum()) if truth is not None else None,
        flagged_outside=int((predicted & ~truth).sum() if truth is not None
                            else predicted.sum())))
  viz.anomaly_gallery(rows, out, map_name)
  return summary


def by_change(workdir: str, score: str, faint: float = 2.0) -> list[dict]:
  """Image AUROC of ``score`` per defect kind, over all the kind's test images and over those
  whose visible change (``crops.csv`` of the run's data, written by
  ``vae_qc.data.photo_defects``: mean |Δ| in the mask, 8-bit grey levels) is at least
  ``faint``; with the faintest defect of each kind and the fraction of good test images it
  scores above. One dict per kind."""
  rows = _scored_rows(workdir, score)
  config = os.path.join(workdir, 'config.json')
  root = wd.read_json(config).get('data', {}).get('root', '') if os.path.exists(config) else ''
  table = os.path.join(root, 'crops.csv') if root else ''
  if not table or not os.path.exists(table):
    raise DataError(f'{workdir} was evaluated on {root or "generated surfaces"}, which has no '
                    'crops.csv: only sets made by vae_qc.data.photo_defects record the '
                    'visible change. A set it made before it wrote the table: make it again '
                    'with the same arguments (the images come out the same).')
  with open(table) as f:
    change = {r['id']: float(r['mean_change']) for r in csv.DictReader(f)
              if r['split'] == 'test' and r['mean_change']}
  good = np.array([float(r[score]) for r in rows if r['label'] == '0'])
  out = []
  for kind in sorted({r['group'] for r in rows if r['label'] == '1'}):
    kind_rows = [r for r in rows if r['label'] == '1' and r['group'] == kind]
    missing = [r['id'] for r in kind_rows if r['id'] not in change]
    if missing:
      raise DataError(f'{table} does not list {missing[:3]}: the run\'s test set is not the '
                      'one that table describes.')
    values = np.array([float(r[score]) for r in kind_rows])
    delta = np.array([change[r['id']] for r in kind_rows])
    seen = delta >= faint

    def auroc(v):
      return metrics.auroc(np.concatenate([good, v]),
                           np.r_[np.zeros(len(good)), np.ones(len(v))]) if len(v) else None
    i = int(np.argmin(delta))
    out.append(dict(kind=kind, n=len(values), auroc=auroc(values), n_faint=int((~seen).sum()),
                    auroc_visible=auroc(values[seen]), faintest=kind_rows[i]['id'],
                    faintest_change=float(delta[i]),
                    faintest_above_good=float((good < values[i]).mean())))
  return out
