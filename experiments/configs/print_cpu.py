"""Print-image study on a CPU: the patch recipe (``./launch.sh print``, minutes on 2 cores).

A fully convolutional VAE (``model.arch='spatial'``: a latent map at 1/8 of the image size)
with a heteroscedastic Gaussian decoder (``gaussian_hetero``: a mean and a scale per pixel),
trained on random 64×64 patches of the native-resolution surfaces drawn afresh every step,
scores each whole image at once; the image score is the largest pixel of the Gaussian-smoothed
map −E_q log p(x_ij|z) (``map_max``). The paper's setting is ``print.py``.
"""
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
  config.data.image_size = 0  # native resolution (the generated surfaces are 224×224)
  config.data.generate.size = 224
  config.data.generate.n_train = 400
  config.data.patch_size = 64
  config.model.arch = 'spatial'
  config.model.blocks = (32, 64, 64)
  config.model.latent = 8
  config.model.likelihood = 'gaussian_hetero'
  config.train.epochs = 100
  config.train.batch_size = 32
  config.train.checkpoint_every_steps = 500
  config.train.log_every_steps = 10  # a line every ~10 s on 2 CPU cores
  config.eval.scores = ('map_max', 'map_topk', 'neg_elbo', 'map_max_raw', 'map_topk_raw')
  config.eval.map = 'nll_smooth'
  config.eval.elbo_samples = 16
  config.eval.map_samples = 8
  config.eval.batch_size = 16
  return config
