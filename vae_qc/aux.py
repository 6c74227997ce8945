"""What some scores need beside the trained model, made after it and kept in its workdir.

* 'latent_gmm' (``latent_nll``, ``neg_elbo_plus_latent``): a Gaussian mixture over the encoder
  means of the training images (``vae_qc.latent_density``), refitted at every evaluation (a
  second or two) and saved as ``<workdir>/latent_gmm.npz`` for ``predict.py``.
* 'background' (``background_ratio``): the background model of Ren et al. (2019), a VAE of the
  same config trained on the same normal images with a fraction ``config.background.noise_rate``
  of their pixels replaced by uniform noise. It trains in ``<workdir>/background/`` (its own
  checkpoints, metrics and lock) and resumes like the main model.

They enter the scores as ``variables['aux']`` (see ``models.model_fns``), so the one scoring
path computes them, and the score cache keys on them.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_qc import latent_density
from vae_qc import models
from vae_qc import train as train_lib
from vae_qc import workdir as wd
from vae_qc.data import tiling as tiling_lib
from vae_qc.errors import ConfigError, VaeQcError

LATENT_FILE = 'latent_gmm.npz'
BACKGROUND_DIR = 'background'
MAX_FIT_CODES = 20000  # training codes the mixture is fitted on at most


def encoder_means(model_cfg: models.ModelConfig, variables, images: np.ndarray,
                  batch_size: int = 256) -> np.ndarray:
  """μ(x) [N, L] of ``images`` [N, H, W, C] (of the model's shape), in batches."""
  encode = jax.jit(lambda v, x: models.encode(model_cfg, v, x).mean)
  variables = {k: v for k, v in variables.items() if k != 'aux'}
  out = []
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size]
    n = len(x)
    if n < batch_size and start:  # one compiled shape
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
    out.append(np.asarray(encode(variables, jnp.asarray(x)))[:n])
  return np.concatenate(out)


def training_codes(model_cfg, variables, train_images: np.ndarray, patch: int, seed: int
                   ) -> np.ndarray:
  """Encoder means of (at most MAX_FIT_CODES) training images, or of random patches of them
  for a patch model (``patch`` > 0), seeded."""
  rng = np.random.default_rng([seed, 31])
  if patch:
    picks = rng.integers(0, len(train_images), MAX_FIT_CODES)
    images = np.concatenate([tiling_lib.random_patches(train_images[picks[i:i + 1000]], patch,
                                                       seed, 10 ** 6 + i)
                             for i in range(0, len(picks), 1000)])
  elif len(train_images) > MAX_FIT_CODES:
    images = train_images[np.sort(rng.choice(len(train_images), MAX_FIT_CODES, replace=False))]
  else:
    images = train_images
  return encoder_means(model_cfg, variables, np.asarray(images, np.float32))


def fit_latent_gmm(model_cfg, variables, train_images, components: int, patch: int = 0,
                   seed: int = 0) -> dict[str, np.ndarray]:
  if model_cfg.arch != 'global':
    raise ConfigError('latent_nll needs one latent vector per image (config.model.arch='
                      "'global'); a spatial model's latent is a map.")
  codes = training_codes(model_cfg, variables, train_images, patch, seed)
  gmm = latent_density.fit(codes, components, seed)
  logging.info('Latent mixture: %d components fitted on %d training codes (latent %d).',
               components, len(codes), codes.shape[-1])
  return gmm


def noisy(batch: np.ndarray, rate: float, seed: int, step: int) -> np.ndarray:
  """``batch`` [B, H, W, C] with each pixel replaced, with probability ``rate``, by a uniform
  value in [0, 1] (Ren et al., 2019); a function of (seed, step), so resumes draw the same."""
  rng = np.random.default_rng([seed, step, 17])
  flip = rng.random(batch.shape[:3] + (1,)) < rate
  return np.where(flip, rng.random(batch.shape).astype(batch.dtype), batch)


def background_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The background model's config: the main one with its own seed (and its own epochs when
  config.background.epochs >= 0; these then replace config.train.steps)."""
  bg = ml_collections.ConfigDict(config.to_dict())
  rate = float(config.background.noise_rate)
  if not 0.0 < rate <= 1.0:
    raise ConfigError(f'config.background.noise_rate (share of pixels replaced by noise) must '
                      f'be in (0, 1], got {rate}.')
  bg.seed = config.seed + 1000
  if config.background.epochs >= 0:
    bg.train.epochs = int(config.background.epochs)
    bg.train.steps = 0
  return bg


def train_background(config, workdir: str, train_images: np.ndarray, model_cfg,
                     transform: Callable | None, *, step_fn=None, put_batch=None, put_state=None,
                     is_writer: bool = True, allow_config_change: bool = False, to_host=None):
  """Trains (or resumes) the background model in ``workdir/background``; its variables."""
  bg = background_config(config)
  directory = os.path.join(workdir, BACKGROUND_DIR)
  train_lib.prepare_workdir(directory, bg, allow_config_change, is_writer=is_writer)
  rate = float(config.background.noise_rate)

  def bg_transform(batch, step):
    batch = batch if transform is None else transform(batch, step)
    return noisy(batch, rate, bg.seed, step)

  logging.info('Background model (noise rate %.2f) in %s.', rate, directory)
  state = train_lib.train(bg, directory, train_images, model_cfg, step_fn=step_fn,
                          put_batch=put_batch, put_state=put_state, is_writer=is_writer,
                          transform=bg_transform)
  return (to_host or jax.device_get)(state.variables)


def save(workdir: str, aux: dict[str, Any]) -> None:
  """Writes the mixture for ``predict.py`` (the background model has its checkpoints)."""
  if 'latent_gmm' in aux:
    wd.write_npz(os.path.join(workdir, LATENT_FILE), aux['latent_gmm'])


def load(workdir: str, config, model_cfg, names) -> dict[str, Any]:
  """The aux entries ``names`` of the trained run in ``workdir`` (for predict)."""
  out: dict[str, Any] = {}
  if 'latent_gmm' in names:
    path = os.path.join(workdir, LATENT_FILE)
    if not os.path.exists(path):
      raise VaeQcError(f'{path} is missing: the run was scored without latent_nll. Re-run the '
                       'study with the score in config.eval.scores to fit it.')
    with np.load(path, allow_pickle=False) as f:
      out['latent_gmm'] = {k: f[k] for k in f.files}
  if 'background' in names:
    bg = background_config(config)
    directory = os.path.join(workdir, BACKGROUND_DIR, 'checkpoints')
    state = train_lib.restore_latest(directory, model_cfg, train_lib.make_optimizer(bg.train),
                                     bg.train)
    if state is None:
      raise VaeQcError(f'{directory} holds no background model; re-run the study with '
                       'background_ratio in config.eval.scores.')
    out['background'] = jax.device_get(state.variables)
  return out
