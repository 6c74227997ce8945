r"""What each anomaly score costs: images/s of scoring MNIST-sized images, score by score.

  python experiments/benchmark_scores.py [--config=experiments/configs/mnist.py] \
      [--images=500] [--scores=neg_elbo,latent_nll,...] [--config.model.latent=32 ...]

One JSON line per score on stdout: the score, the settings it depends on (K, refit steps),
the compile time and the images/s of a second, compiled pass over ``--images`` images. The
model is the config's architecture with freshly initialised parameters (the cost of a score
does not depend on training); a score that needs a latent mixture gets one fitted on the
model's codes of the images, and one that needs a background model gets a second
initialisation. Scores share work when computed together (one pass of K samples serves
neg_elbo and neg_log_px at equal K); here each is timed alone, so the figures add up to more
than a run that computes them together.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', 'experiments/configs/mnist.py',
                                          'The study config (model and eval settings).')
_IMAGES = flags.DEFINE_integer('images', 500, 'Images scored per timed pass.')
_SCORES = flags.DEFINE_list(
    'scores', ['neg_elbo', 'neg_log_px', 'recon_error', 'kl', 'latent_nll',
               'neg_elbo_plus_latent', 'likelihood_regret', 'likelihood_regret_iw',
               'background_ratio', 'background_ratio_elbo'], 'Scores to time, one at a time.')


def main(argv):
  del argv
  from vae_qc import runtime  # pylint: disable=g-import-not-at-top
  runtime.tune_for_cpu()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vae_qc import aux  # pylint: disable=g-import-not-at-top
  from vae_qc import evaluate  # pylint: disable=g-import-not-at-top
  from vae_qc import latent_density  # pylint: disable=g-import-not-at-top
  from vae_qc import train  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  shape = (28, 28, 1)
  model_cfg = train.model_config(config, shape)
  optimizer = train.make_optimizer(config.train)
  variables = train.create_train_state(model_cfg, optimizer, jax.random.key(0)).variables
  background = train.create_train_state(model_cfg, optimizer, jax.random.key(1)).variables
  rng = np.random.default_rng(0)
  images = rng.random((_IMAGES.value,) + shape).astype(np.float32)
  codes = aux.encoder_means(model_cfg, variables, images)
  full = dict(jax.device_get(variables), aux={
      'latent_gmm': latent_density.fit(codes, min(config.eval.latent_components,
                                                  len(codes) // 2)),
      'background': jax.device_get(background)})
  base = evaluate.EvalSettings.from_config(config.eval)
  for name in _SCORES.value:
    settings = dataclasses.replace(base, scores=(name,))
    scorer = evaluate.Scorer(model_cfg, settings)
    t0 = time.time()
    scorer.scores(full, images[:settings.batch_size])
    compile_s = time.time() - t0
    t0 = time.time()
    scorer.scores(full, images[::-1].copy())  # other keys: no cache anywhere
    seconds = time.time() - t0
    print(json.dumps({
        'score': name, 'images_per_s': round(len(images) / seconds, 1),
        'compile_and_first_batch_s': round(compile_s, 1), 'images': len(images),
        'elbo_samples': settings.elbo_samples, 'log_px_samples': settings.log_px_samples,
        'regret_steps': settings.regret_steps, 'latent': model_cfg.latent,
        'likelihood': model_cfg.likelihood, 'load_avg': round(_load(), 2)}), flush=True)
  return 0


def _load() -> float:
  try:
    with open('/proc/loadavg') as f:
      return float(f.read().split()[0])
  except OSError:
    return float('nan')


if __name__ == '__main__':
  sys.exit(app.run(main))
