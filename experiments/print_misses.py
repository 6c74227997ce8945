r"""A picture of where a trained print run fails: the lowest-scored test image of each defect kind.

  python experiments/print_misses.py --out=misses.png \
    --case=runs/print_gravel:hole --case=runs/print_brick:smudge --case=runs/print:warping

For each ``--case=WORKDIR:KIND`` it takes the defective test image of that kind with the
lowest ``--score`` in the run's ``scores.csv`` (``WORKDIR:good``: the good test image with the
highest, the worst false alarm), scores it again through ``vae_qc.load_run``
(the path of ``predict.py``; the score must come out as in ``scores.csv``), and draws one row:
input | reconstruction | the run's map with the true mask (green) and the run's predicted mask
(red, the map at the run's pixel threshold). The README's misses figure is made this way.

  python experiments/print_misses.py --change=runs/brick_val

prints instead, for a run on a set made by ``vae_qc.data.photo_defects``, the image AUROC of
each defect kind over all its test images and over those that change their mask by at least
``--faint`` grey levels on average (the set's ``crops.csv``), and the faintest of each kind.
"""
from __future__ import annotations

import json

from absl import app
from absl import flags

from vae_qc import cli
from vae_qc.errors import DataError

_CASES = flags.DEFINE_multi_string('case', None, 'WORKDIR:KIND, once per row.')
_CHANGE = flags.DEFINE_multi_string('change', None, 'A run on a photo_defects set: print the '
                                    'image AUROC per kind by visible change (no picture).')
_FAINT = flags.DEFINE_float('faint', 2.0, 'With --change: a defect that changes its mask by '
                            'less than this many grey levels on average counts as faint.')
_OUT = flags.DEFINE_string('out', 'misses.png', 'The picture to write (PNG).')
_SCORE = flags.DEFINE_string('score', 'map_topk_logratio', 'The image score that ranks the images.')
flags.register_multi_flags_validator(
    ['case', 'change'], lambda v: bool(v['case']) != bool(v['change']),
    message='give either --case=WORKDIR:KIND (a picture) or --change=WORKDIR (a table).')


def _parse(spec: str) -> tuple[str, str]:
  workdir, sep, kind = spec.rpartition(':')
  if not sep or not workdir or not kind:
    raise DataError(f'--case={spec!r}: write it as WORKDIR:KIND, e.g. runs/print:warping.')
  return workdir, kind


def main(argv):
  del argv
  def go():
    from vae_qc import misses  # pylint: disable=g-import-not-at-top  # after the CPU tuning
    if _CHANGE.value:
      for workdir in _CHANGE.value:
        print(f'{workdir}: {_SCORE.value}; faint: mean change < {_FAINT.value:g} grey levels')
        print('| kind | n | image AUROC | faint | image AUROC without them | faintest (change, '
              'above good) |')
        print('|---|---|---|---|---|---|')
        for r in misses.by_change(workdir, _SCORE.value, _FAINT.value):
          visible = '–' if r['auroc_visible'] is None else f'{r["auroc_visible"]:.3f}'
          print(f'| {r["kind"]} | {r["n"]} | {r["auroc"]:.3f} | {r["n_faint"]} | {visible} | '
                f'{r["faintest"]} ({r["faintest_change"]:.2f}, {r["faintest_above_good"]:.2f}) |')
      return
    summary = misses.misses([_parse(c) for c in _CASES.value], _OUT.value, _SCORE.value)
    for row in summary:
      print(json.dumps(row))
    print(f'wrote {_OUT.value}')
  cli.run(go, 'print_misses')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
