"""MNIST one-digit-anomalous study (paper, ch. 3): blocks 32/64, FC 64, latent 2 or 32.

  python experiments/mnist_anomaly.py --config=experiments/configs/mnist.py \
      --workdir=runs/mnist_d7 --config.data.anomalous_digit=7 --config.model.latent=32
"""
import os
import sys

import ml_collections

try:
  from experiments.configs import default
except ImportError:  # loaded by path (config_flags) from a script: the repository root is not
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()

  config.data = ml_collections.ConfigDict()
  config.data.name = 'mnist'
  config.data.source = 'auto'  # auto | tfds | idx | bundled
  config.data.anomalous_digit = 0
  config.data.seed = 0  # split of the bundled single pool
  config.data.test_fraction = 0.2  # bundled pool: share of each class on the test side
  # Validation, to choose settings on (never reported as test): this share of the normal
  # training images, held out of training, plus the anomalous digit of the test split (which
  # the paper's protocol leaves unused). 0: no validation, every anomalous image is tested.
  config.data.val_fraction = 0.1
  config.data.tfds_data_dir = ''
  config.data.idx_dir = ''
  config.data.allow_download = False
  config.data.max_train = 0  # 0 = all
  config.data.max_test_normal = 0  # also limits the normal validation images
  config.data.max_test_anomalous = 0  # ... and the anomalous ones

  # The paper's model, training and scores are the defaults. Decision threshold: the 99th
  # percentile of normal validation scores (a seeded 10% of the test set, left out of the
  # threshold's own test figures; AUROC etc. use all of it).
  config.threshold.val_source = 'test'
  return config
