"""Shared fixtures: tiny model configs and data so that JAX compiles stay few and small."""
import os

import numpy as np
import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


@pytest.fixture(scope='session')
def tiny_images():
  """[64, 8, 8, 1] float32 images in [0, 1]: blurred blobs, deterministic."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:8, 0:8]
  centres = rng.uniform(2, 6, size=(64, 2))
  ims = np.exp(-((yy[None] - centres[:, 0, None, None]) ** 2 +
                 (xx[None] - centres[:, 1, None, None]) ** 2) / 4.0)
  return ims[..., None].astype(np.float32)


def tiny_mnist_overrides(workdir_unused=None):
  """Config overrides for a seconds-long MNIST study on the bundled subset."""
  return {
      'data.max_train': 256, 'data.max_test_normal': 48, 'data.max_test_anomalous': 32,
      'model.blocks': (8,), 'model.fc': 16, 'model.latent': 2,
      'train.epochs': 2, 'train.batch_size': 64, 'train.log_every_steps': 2,
      'train.checkpoint_every_steps': 4,
      'eval.elbo_samples': 4, 'eval.log_px_samples': 8, 'eval.chunk_size': 4,
      'eval.map_samples': 2, 'eval.batch_size': 40, 'eval.num_plot_images': 2,
  }
