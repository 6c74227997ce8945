r"""A picture of where a trained print run fails: the lowest-scored test image of each defect kind.

  python experiments/print_misses.py --out=misses.png \
    --case=runs/print_gravel:hole --case=runs/print_brick:smudge --case=runs/print:warping

For each ``--case=WORKDIR:KIND`` it takes the defective test image of that kind with the
lowest ``--score`` in the run's ``scores.csv``, scores it again through ``vae_qc.load_run``
(the path of ``predict.py``; the score must come out as in ``scores.csv``), and draws one row:
input | reconstruction | the run's map with the true mask (green) and the run's predicted mask
(red, the map at the run's pixel threshold). The README's misses figure is made this way.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Sequence

from absl import app
from absl import flags

from vae_qc import cli
from vae_qc.errors import DataError

_CASES = flags.DEFINE_multi_string('case', None, 'WORKDIR:KIND, once per row.')
_OUT = flags.DEFINE_string('out', 'misses.png', 'The picture to write (PNG).')
_SCORE = flags.DEFINE_string('score', 'map_topk_logratio', 'The image score that ranks the images.')
flags.mark_flags_as_required(['case'])


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
  import numpy as np  # pylint: disable=g-import-not-at-top  # after the CPU tuning
  from PIL import Image  # pylint: disable=g-import-not-at-top

  import vae_qc  # pylint: disable=g-import-not-at-top
  from vae_qc import viz  # pylint: disable=g-import-not-at-top
  rows, summary = [], []
  for workdir, kind in cases:
    image_id, value = lowest(workdir, kind, score)
    results = json.load(open(os.path.join(workdir, 'results.json')))
    root, map_name = results['data']['root'], results['pixel']['map']
    threshold = results['pixel'].get('threshold', {}).get('value', np.inf)
    run = vae_qc.load_run(workdir)
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


def _parse(spec: str) -> tuple[str, str]:
  workdir, sep, kind = spec.rpartition(':')
  if not sep or not workdir or not kind:
    raise DataError(f'--case={spec!r}: write it as WORKDIR:KIND, e.g. runs/print:warping.')
  return workdir, kind


def main(argv):
  del argv
  def go():
    summary = misses([_parse(c) for c in _CASES.value], _OUT.value, _SCORE.value)
    for row in summary:
      print(json.dumps(row))
    print(f'wrote {_OUT.value}')
  cli.run(go, 'print_misses')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
