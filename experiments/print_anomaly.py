r"""Print-image study: train on good 3D-printed surfaces, flag and locate defects.

  python experiments/print_anomaly.py --config=experiments/configs/print_cpu.py --workdir=runs/print
  python experiments/print_anomaly.py --config=experiments/configs/print.py \
      --workdir=runs/print_real --config.data.root=/data/my_prints   # MVTec AD layout
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from vae_qc import cli
from vae_qc import study

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (config, checkpoints, results).')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume in a workdir whose saved config differs.')
_CONFIG = config_flags.DEFINE_config_file('config', None,
                                          'Config file, e.g. experiments/configs/print.py.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  cli.run(lambda: study.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                           _ALLOW_CONFIG_CHANGE.value))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
