"""MNIST one-digit-anomalous study (paper, ch. 3): blocks 32/64, FC 64, latent 2 or 32.

  python experiments/mnist_anomaly.py --config=experiments/configs/mnist.py \
      --workdir=runs/mnist_d7 --config.data.anomalous_digit=7 --config.model.latent=32
"""
import math

import ml_collections

from vae_qc import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters init, training noise and data order

  config.data = ml_collections.ConfigDict()
  config.data.name = 'mnist'
  config.data.source = 'auto'  # auto | tfds | idx | bundled
  config.data.anomalous_digit = 0
  config.data.seed = 0  # split of the bundled single pool
  config.data.test_fraction = 0.2  # bundled pool: share of each class on the test side
  config.data.tfds_data_dir = ''
  config.data.idx_dir = ''
  config.data.allow_download = False
  config.data.max_train = 0  # 0 = all
  config.data.max_test_normal = 0
  config.data.max_test_anomalous = 0

  config.model = ml_collections.ConfigDict()
  config.model.blocks = (32, 64)
  config.model.fc = 64
  config.model.latent = 2
  config.model.norm = 'batch'  # batch | none
  config.model.likelihood = 'gaussian_fixed'
  config.model.sigma = 1.0 / math.sqrt(2.0)

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 50
  config.train.batch_size = 128
  config.train.learning_rate = 1e-3
  config.train.num_samples = 1  # K of the training ELBO
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  config.train.max_checkpoints = 2
  config.train.nan_policy = 'stop'  # stop | skip (skip the update and count it)

  config.eval = ml_collections.ConfigDict()
  config.eval.scores = ('neg_elbo', 'neg_log_px', 'recon_error', 'kl')
  config.eval.elbo_samples = 128  # the paper's K for the ELBO score
  config.eval.log_px_samples = 1000  # K of importance-sampled log p(x)
  config.eval.chunk_size = 50  # samples decoded at once (memory ~ chunk, not K)
  config.eval.map_samples = 16  # samples of the per-pixel maps
  config.eval.batch_size = 250
  config.eval.seed = 0  # fixed: scores are reproducible
  config.eval.num_plot_images = 8

  # Decision threshold: the 99th percentile of normal validation scores (a seeded 10% of the
  # test set, left out of the threshold's own test figures; AUROC etc. use all of it).
  config.threshold = config_lib.threshold_section(method='normal_quantile', val_source='test')
  config.parallel = config_lib.parallel_section()
  return config
