r"""Scores new images with a trained run: scores, verdicts and anomaly maps.

  python experiments/predict.py --workdir=runs/print --images=DIR --out=DIR

Images of any size: they are read exactly as training read its data (channels, resize or
crop and the texture's resampling, from the run's model.json) or, for a run trained on tiles,
cut into the same tiles. Maps are at the size the model saw: a run whose images were
resampled to their texture's scale (``image_scale`` < 1) gives maps of that many times the
photo's size.
The scores come from the same function as the run's evaluation (``vae_qc.evaluate``), with
the same per-image keys, so an image scores the same here and in its scores.csv.
"""
from absl import app
from absl import flags

from vae_qc import cli
from vae_qc import predict

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run (model.json, checkpoints/).')
_IMAGES = flags.DEFINE_string('images', None, 'Folder of images to score (searched recursively).')
_OUT = flags.DEFINE_string('out', None, 'Output folder: scores.csv, maps/*.png, maps.npz.')
_ON_BAD = flags.DEFINE_enum('on_bad_image', 'skip', ['skip', 'error'],
                            'Unreadable files: skip (and list them) or stop.')
flags.mark_flags_as_required(['workdir', 'images', 'out'])


def main(argv):
  del argv
  cli.run(lambda: predict.predict(_WORKDIR.value, _IMAGES.value, _OUT.value, _ON_BAD.value),
          'predict')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
