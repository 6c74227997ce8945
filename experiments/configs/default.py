"""Defaults of both studies (flax's ``configs/default.py`` style): the paper's MNIST model,
training and evaluation. ``mnist.py`` and ``print.py`` call :func:`get_config` and override.
"""
import math

import ml_collections

from vae_qc import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  """Every section but ``data``, which each study defines."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters init, training noise and data order

  config.model = ml_collections.ConfigDict()
  config.model.blocks = (32, 64)
  config.model.fc = 64
  config.model.latent = 2
  config.model.norm = 'batch'  # batch | none
  config.model.arch = 'global'  # global (paper: one latent vector) | spatial (a latent map)
  config.model.inpaint = 0  # > 0: cells per patch side hidden from the encoder (vae_qc.inpaint)
  config.model.likelihood = 'gaussian_fixed'
  config.model.sigma = 1.0 / math.sqrt(2.0)

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 50
  config.train.steps = 0  # > 0: this many steps whatever the number of images (epochs unused)
  # > 0: seconds that training may take on this machine; train.steps is halved (at most 3
  # times) until a measured estimate fits (vae_qc.budget). 0: train.steps as given
  config.train.time_budget_s = 0.0
  config.train.batch_size = 128
  config.train.learning_rate = 1e-3
  config.train.lr_schedule = 'constant'  # constant | cosine (decays to 0 at the last step)
  config.train.num_samples = 1  # K of the training ELBO
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  config.train.max_checkpoints = 2
  config.train.nan_policy = 'stop'  # stop | skip (skip the update and count it)
  # Signals that preempt the run ('' for none): it finishes the step (or scoring batch) at
  # hand, saves a checkpoint and exits with status 75; the same command resumes. Several
  # processes: SIGTERM always counts (JAX's preemption service), and all stop at one step.
  config.train.preemption_signals = 'TERM,USR1'

  config.eval = ml_collections.ConfigDict()
  config.eval.scores = ('neg_elbo', 'neg_log_px', 'recon_error', 'kl')
  config.eval.elbo_samples = 128  # the paper's K for the ELBO score
  config.eval.log_px_samples = 1000  # K of importance-sampled log p(x)
  config.eval.chunk_size = 50  # samples decoded at once (memory ~ chunk, not K)
  config.eval.map_samples = 16  # samples of the per-pixel maps
  # ... drawn in antithetic pairs (z̄ + σε, z̄ − σε): the same expected maps, with the noise
  # odd in ε cancelled within a pair (vae_qc/scores.py, pixel_maps)
  config.eval.map_antithetic = False
  # nll | abs_error | sq_error | z_error | projection | cal_error | selfcal_error (| *_smooth
  # | *_excess) | {sq_error,z_error,abs_error,projection,cal_error,selfcal_error}_logratio
  # (cal_error, selfcal_error: vae_qc/calibration.py, fitted after training)
  config.eval.map = 'nll'
  # cal_error: the good residual expected per bin of the reconstruction's slope and, when this
  # is an odd width >= 3 (px), also per bin of its local contrast over that window (0: slope)
  config.eval.map_contrast_window = 0
  # cal_error: the residual it divides, 'sq_error' (the excess −log p of a fixed-σ Gaussian)
  # or 'abs_error' (that of a Laplace, likelihood 'laplace_fixed')
  config.eval.map_residual = 'sq_error'
  config.eval.map_sigma = 4.0  # Gaussian smoothing (px) of *_smooth maps and map scores
  config.eval.map_topk = 100  # pixels averaged by the map_topk scores
  # *_logratio maps (log of a smoothed residual over the image's median): weight of the side
  # *more* likely than typical (0: only less likely regions score; 1: both sides alike).
  config.eval.map_low_weight = 0.5
  # *_logratio maps: Gaussian smoothing (px) of the two-sided log ratio once its sides are taken
  # (0: none): map_sigma is then the window of the residual's local energy, and a defect that
  # leaves a ring of too much residual around a core of too little scores on both.
  config.eval.map_post_sigma = 0.0
  # Standardise the map per distance to the image's border by good training images' maps
  # (vae_qc/position.py, fitted after training): a border made from fewer tiles and mirrored
  # smoothing no longer outshines the interior.
  config.eval.map_position = False
  # '*_logratio' map scores: add the image's level excess, how far the log median of its
  # smoothed map lies beyond the range of good training images' (vae_qc/level.py, fitted after
  # training): an image wrong everywhere (blank, noisy, another surface) has no region that
  # stands out from its own median, and would score as good.
  config.eval.map_level = False
  # ... fitted on these good images: 'training' (the map calibration's) or 'held_out' (those
  # the threshold holds out of training; a tie on the validation sets, docs/print_study.md)
  config.eval.map_level_images = 'training'
  config.eval.latent_components = 10  # latent_nll: Gaussian mixture over the training codes
  config.eval.regret_steps = 50  # likelihood_regret: Adam steps refitting q to each image
  config.eval.regret_lr = 0.05  # ... their learning rate
  config.eval.regret_samples = 1  # ... samples of the refit's ELBO per step
  # map 'projection' (Dehaene et al., 2020; vae_qc/projection.py): (x − x*)², x* the image after
  # projection_steps gradient steps of size projection_rate toward a higher ELBO, each pixel's
  # step tempered by its squared residual, with an L1 pull of projection_l1 nats back to x.
  config.eval.projection_steps = 10
  config.eval.projection_rate = 0.5
  config.eval.projection_l1 = 5.0
  config.eval.batch_size = 250
  config.eval.seed = 0  # fixed: scores are reproducible
  config.eval.num_plot_images = 8
  # Keep each scored batch in <workdir>/scores_cache/ as it is computed, so a killed or
  # preempted scoring pass resumes where it stopped (vae_qc/score_cache.py). Discarded, with a
  # log line, when the eval settings, the model's parameters or the test images change.
  config.eval.cache_scores = True
  # ... and delete it once the results are written (it can take a gigabyte); True keeps it.
  config.eval.keep_score_cache = False

  # background_ratio (Ren et al., 2019): a second VAE of the same config, trained on the
  # normal images with this fraction of pixels replaced by uniform noise, when a score needs it.
  config.background = ml_collections.ConfigDict()
  config.background.noise_rate = 0.2
  config.background.epochs = -1  # -1: as the main model (config.train.steps / epochs)

  # Decision threshold: the 99th percentile of scores of good images held out of training.
  config.threshold = config_lib.threshold_section(method='normal_quantile', val_source='train')
  config.parallel = config_lib.parallel_section()
  return config
