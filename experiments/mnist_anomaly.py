r"""MNIST one-digit-anomalous study (Tonnaer et al., 2019, ch. 3).

  python experiments/mnist_anomaly.py --config=experiments/configs/mnist.py \
      --workdir=runs/mnist_d7 --config.data.anomalous_digit=7 --config.model.latent=2
"""
from vae_qc import cli

if __name__ == '__main__':
  cli.study_app('experiments/configs/mnist.py')
