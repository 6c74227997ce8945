r"""Speed of scoring large photos with a trained run's own recipe, per-pixel map included.

  python experiments/benchmark_predict.py --workdir=runs/print --size=1024 --images=4

Times ``vae_qc.evaluate.score_images`` with maps (the path of evaluation and of
``predict.py``: sliding window and stitching for a tiled model, one pass for a spatial one,
smoothing, map scores and the configured map ``config.eval.map``; every scale of a
multi-scale run, ``vae_qc.scales``) on ``--images`` generated
grey print surfaces of ``--size`` pixels,
after one warm-up image of that size (compilation excluded), and prints one JSON line with
images/s, seconds per image, megapixels/s and the machine's load average. The photos are
scored as ``predict.py`` scores a folder, in one call (``images_per_s``: its chunks overlap one
photo's host work with another's model passes, ``vae_qc.evaluate.WORKERS``), and one call per
photo (``images_per_s_one_at_a_time``: a photo's own latency). It also prints
what the model passes of one photo's map cost (``model_gflop_per_image``: XLA's count of
the compiled encoder and decoder of each model, times its tiles and samples; a run's separate
−ELBO pass, where it has one, is not counted), the rate they then
ran at (``model_gflop_per_s``, as if the photo's whole time were theirs) and the machine's
float32 matrix-product rate (``matmul_peak_gflops``), so a figure can be read against what
the machine can do.
``--map_samples``, ``--tile_stride`` (``--scale_tile_stride``) and ``--map_scores_only`` time
cheaper scoring settings of the same run (docs/print_study.md, "Speed": what each costs in
detection).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app
from absl import flags

from vae_qc import cli
from vae_qc import runtime

_WORKDIR = flags.DEFINE_string('workdir', 'runs/print', 'A trained print run.')
_SIZE = flags.DEFINE_integer('size', 1024, 'Side of the square test photos (px).')
_IMAGES = flags.DEFINE_integer('images', 4, 'Timed images.')
_SEED = flags.DEFINE_integer('seed', 123, 'Seed of the generated photos.')
_MAP_SAMPLES = flags.DEFINE_integer('map_samples', 0,
                                    "Samples z ~ q per tile of the map; 0: the run's own.")
_STRIDE = flags.DEFINE_integer('tile_stride', 0, "The main model's sliding-window stride (px); 0: "
                               "the run's own.")
_SCALE_STRIDE = flags.DEFINE_integer('scale_tile_stride', 0,
                                     "A multi-scale run's further scales' stride (px); 0: "
                                     "their own.")
_MAP_ONLY = flags.DEFINE_bool('map_scores_only', False,
                              'Time only the map scores of the run (no per-tile −ELBO pass).')


def main(argv):
  del argv
  cli.run(_benchmark, 'benchmark_predict')  # CPU tuning before JAX starts; one-line errors


def _benchmark():
  import numpy as np  # pylint: disable=g-import-not-at-top  # after the CPU tuning

  from vae_qc import evaluate  # pylint: disable=g-import-not-at-top
  from vae_qc import predict  # pylint: disable=g-import-not-at-top
  from vae_qc import scores as scores_lib  # pylint: disable=g-import-not-at-top
  from vae_qc.data import print_surfaces  # pylint: disable=g-import-not-at-top
  from vae_qc.data import tiling  # pylint: disable=g-import-not-at-top
  config, model_cfg, variables, info = predict.load_run(_WORKDIR.value)
  channels = model_cfg.image_shape[-1]
  photos = [print_surfaces.generate_good(np.random.default_rng([_SEED.value, i]), _SIZE.value,
                                         channels) for i in range(_IMAGES.value + 1)]
  settings = evaluate.EvalSettings.from_config(config.eval)
  if _MAP_SAMPLES.value:
    settings = dataclasses.replace(settings, map_samples=_MAP_SAMPLES.value)
  if _MAP_ONLY.value:
    settings = dataclasses.replace(settings, scores=scores_lib.map_score_names(settings.scores))
  scales = predict.load_scales(_WORKDIR.value, info, settings)  # of a multi-scale run
  if _SCALE_STRIDE.value:
    scales = [dataclasses.replace(s, tiling=dataclasses.replace(s.tiling,
                                                                stride=_SCALE_STRIDE.value))
              for s in scales]
  scorer = evaluate.Scorer(model_cfg, settings, scales=scales)
  predict.load_map_tables(scorer, _WORKDIR.value)  # its map's calibrations, if any
  tile = tiling.Tiling(**info['tiling'])
  if _STRIDE.value:
    tile = dataclasses.replace(tile, stride=_STRIDE.value)
  def score(batch):  # as predict.py: the scores and the configured map (derived on reading)
    _, maps = evaluate.score_images(scorer, variables, batch, tile, with_maps=True)
    return maps[config.eval.map]

  gflop = sum(_model_gflop(cfg, v, t, _SIZE.value, channels, scorer.settings.map_samples)
              for cfg, v, t in [(model_cfg, variables, tile)] + [
                  (sc.scorer.model_cfg, sc.variables, sc.tiling) for sc in scorer.scales])
  score(photos[:1])  # compile
  t0 = time.perf_counter()
  score(photos[1:])
  seconds = (time.perf_counter() - t0) / _IMAGES.value
  t0 = time.perf_counter()
  for photo in photos[1:]:
    score([photo])
  alone = (time.perf_counter() - t0) / _IMAGES.value
  print(json.dumps({
      'workdir': _WORKDIR.value, 'size': _SIZE.value, 'images': _IMAGES.value,
      'arch': model_cfg.arch, 'patch': list(model_cfg.image_shape[:2]),
      'tiling': dataclasses.asdict(tile),  # the timed window (--tile_stride included)
      'scales': [dataclasses.asdict(s.tiling) for s in scorer.scales],
      'map_samples': scorer.settings.map_samples, 'scores': list(scorer.settings.scores),
      'seconds_per_image': round(seconds, 3), 'images_per_s': round(1.0 / seconds, 3),
      'megapixels_per_s': round(_SIZE.value ** 2 / seconds / 1e6, 3),
      'seconds_per_image_one_at_a_time': round(alone, 3),
      'images_per_s_one_at_a_time': round(1.0 / alone, 3),
      'model_gflop_per_image': round(gflop, 2), 'model_gflop_per_s': round(gflop / seconds, 1),
      'matmul_peak_gflops': round(runtime.matmul_peak_gflops(), 1),
      'load_avg': os.getloadavg()}))


def _model_gflop(model_cfg, variables, tile, size: int, channels: int, samples: int) -> float:
  """GFLOP of one model's passes over a ``size``² photo: XLA's cost analysis of the compiled
  encoder and decoder of one input (a tile, or the whole photo for a model without tiles),
  times the tiles and, for the decoder, the map's ``samples``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vae_qc import models  # pylint: disable=g-import-not-at-top
  from vae_qc.data import tiling  # pylint: disable=g-import-not-at-top
  if tile.size:
    tiles, cfg = tiling.num_tiles(size, size, tile.size, tile.stride), model_cfg
  else:
    tiles, cfg = 1, model_cfg.for_shape((size, size, channels))
  encode = lambda v, x: models.encode(cfg, v, x).mean
  decode = lambda v, z: models.decode(cfg, v, z).loc
  x = jax.ShapeDtypeStruct((1,) + tuple(cfg.image_shape), jnp.float32)
  z = jax.eval_shape(encode, variables, x)

  def flops(fn, arg):
    cost = jax.jit(fn).lower(variables, arg).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])

  encoder, decoder = flops(encode, x), flops(decode, z)
  return tiles * (encoder + samples * decoder) / 1e9


if __name__ == '__main__':
  app.run(main)
