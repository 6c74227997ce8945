"""MNIST one-digit-anomalous study, the recommended recipe (the default of ``./launch.sh mnist``).

The paper's VAE blocks and training (blocks 32/64, FC 64, Adam 1e-3, batch 128, 50 epochs),
with a Bernoulli likelihood and a 32-dimensional latent, scored by ``latent_nll``: the
density of the image's code μ(x) under a 20-component Gaussian mixture fitted on the training
images' codes. The paper's score (−ELBO, K = 128) is reported beside it. The likelihood, the
latent size, the score and the mixture size were chosen on the validation split
(``config.data.val_fraction``), never on the test figures (README, "MNIST").
``mnist.py`` is the paper's setting (Gaussian σ = 1/√2, latent 2).
"""
import os
import sys

import ml_collections

try:
  from experiments.configs import mnist as mnist_config
except ImportError:  # loaded by path (config_flags) from a script: the repository root is not
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  from experiments.configs import mnist as mnist_config


def get_config() -> ml_collections.ConfigDict:
  config = mnist_config.get_config()
  config.model.likelihood = 'bernoulli'
  config.model.latent = 32
  config.eval.scores = ('latent_nll', 'neg_elbo', 'neg_log_px', 'recon_error', 'kl',
                        'neg_elbo_plus_latent')
  config.eval.latent_components = 20
  config.eval.log_px_samples = 128  # one pass of K = 128 serves the ELBO and log p(x)
  return config
