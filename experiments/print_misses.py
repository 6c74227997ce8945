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

import json

from absl import app
from absl import flags

from vae_qc import cli
from vae_qc.errors import DataError

_CASES = flags.DEFINE_multi_string('case', None, 'WORKDIR:KIND, once per row.')
_OUT = flags.DEFINE_string('out', 'misses.png', 'The picture to write (PNG).')
_SCORE = flags.DEFINE_string('score', 'map_topk_logratio', 'The image score that ranks the images.')
flags.mark_flags_as_required(['case'])


def _parse(spec: str) -> tuple[str, str]:
  workdir, sep, kind = spec.rpartition(':')
  if not sep or not workdir or not kind:
    raise DataError(f'--case={spec!r}: write it as WORKDIR:KIND, e.g. runs/print:warping.')
  return workdir, kind


def main(argv):
  del argv
  def go():
    from vae_qc import misses  # pylint: disable=g-import-not-at-top  # after the CPU tuning
    summary = misses.misses([_parse(c) for c in _CASES.value], _OUT.value, _SCORE.value)
    for row in summary:
      print(json.dumps(row))
    print(f'wrote {_OUT.value}')
  cli.run(go, 'print_misses')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
