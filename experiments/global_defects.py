r"""Does a trained run flag images that are wrong everywhere? (``vae_qc.global_defects``)

  python experiments/global_defects.py --workdir=runs/print

Takes the good test images of the run's own data set (or the images of ``--images=DIR``,
read as training read its images), changes each as a whole (out of focus, sensor noise, flat
or harsh light, a negative, an empty frame, uniform noise, turned by 90°) and prints one row
per change: the image AUROC of the changed images against the good ones by the run's
threshold score, and the share of each that the run's threshold flags. Writes the table as
JSON to ``--out`` (default ``<workdir>/global_defects.json``).
"""
from __future__ import annotations

import os

from absl import app
from absl import flags

from vae_qc import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run.')
_IMAGES = flags.DEFINE_string('images', None, 'Good images to change (default: the good test '
                              "images of the run's data set).")
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the noise variants.')
_OUT = flags.DEFINE_string('out', None, 'JSON file (default <workdir>/global_defects.json).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv

  def go():
    import numpy as np  # pylint: disable=g-import-not-at-top  # after the CPU tuning

    import vae_qc  # pylint: disable=g-import-not-at-top
    from vae_qc import data as data_lib  # pylint: disable=g-import-not-at-top
    from vae_qc import global_defects  # pylint: disable=g-import-not-at-top
    from vae_qc import workdir as wd  # pylint: disable=g-import-not-at-top
    from vae_qc.errors import DataError  # pylint: disable=g-import-not-at-top
    run = vae_qc.load_run(_WORKDIR.value)
    if _IMAGES.value:
      _, images, _ = run.read_images(_IMAGES.value)
      if len({im.shape for im in images}) != 1:
        raise DataError(f'the images under {_IMAGES.value} differ in size; give images of one '
                        'size.')
      images = np.stack(images)
    else:
      dataset = data_lib.load(run.config.data)
      images = dataset.test_images[dataset.test_labels == 0]
      if not len(images):
        raise DataError(f'the test set of {_WORKDIR.value} has no good images; give --images.')
    out = global_defects.evaluate(run, images, _SEED.value)
    pct = lambda v: '–' if v is None else f'{100 * v:.0f}%'
    print(f'{_WORKDIR.value}: {len(images)} good images, score {out["score"]}, threshold '
          f'{out["threshold"]}; the good ones flagged: {pct(out["good_flagged"])}')
    print('| change | image AUROC | flagged |')
    print('|---|---|---|')
    for name, row in out['variants'].items():
      print(f'| {name} ({row["what"]}) | {row["auroc"]:.3f} | {pct(row["flagged"])} |')
    path = _OUT.value or os.path.join(_WORKDIR.value, 'global_defects.json')
    wd.write_json(path, out)
    print(f'wrote {path}')

  cli.run(go, 'global_defects')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
