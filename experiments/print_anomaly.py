r"""Print-image study: train on good 3D-printed surfaces, flag and locate defects.

  python experiments/print_anomaly.py --config=experiments/configs/print_cpu.py --workdir=runs/print
  python experiments/print_anomaly.py --config=experiments/configs/print.py \
      --workdir=runs/print_real --config.data.root=/data/my_prints   # MVTec AD layout
"""
from vae_qc import cli

if __name__ == '__main__':
  cli.study_app('experiments/configs/print.py')
