"""Print-image study on a CPU: the paper's architecture on 128×128 generated surfaces with a
short schedule and fewer Monte-Carlo samples (minutes on 2 cores, not hours)."""
import os
import sys

import ml_collections

try:
  from experiments.configs import print as print_config
except ImportError:  # loaded by path (config_flags) from a script: the repository root is not
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  from experiments.configs import print as print_config


def get_config() -> ml_collections.ConfigDict:
  config = print_config.get_config()
  config.data.image_size = 128
  config.data.generate.size = 128
  config.data.generate.n_train = 400
  config.train.epochs = 15
  config.train.batch_size = 32
  config.eval.elbo_samples = 16
  config.eval.map_samples = 8
  config.eval.batch_size = 32
  return config
