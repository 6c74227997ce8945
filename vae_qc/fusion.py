"""Several trained runs as one detector: the mean of their anomaly maps, measured on their test set.

Runs trained on the same images with different patch sizes see defects at different scales:
a 16-px patch model redraws fine texture that a 32-px one blurs, the 32-px one places a layer
line that a 16-px patch cannot. :func:`evaluate_fusion` scores the test set of the runs (the
one their ``config.data`` names; they must agree on it) with each run's own recipe
(``vae_qc.load_run``, the path of ``predict.py``), takes each run's configured map
(``config.eval.map``, the same name for every run, e.g. the unitless 'sq_error_logratio')
and averages them per pixel. The fused map is scored as a run's map is: image AUROC of the
mean of its ``eval.map_topk`` largest pixels (the ``map_topk`` scores of a run whose map is
already smoothed), pixel AUROC and AUPRO, overall and per defect kind, for each run alone and
for the fusion, so one call gives the comparison. A run with ``config.eval.map_level`` adds
its images' level excess (``vae_qc.level``) to that image score, as its own scores do; the
fusion adds the mean of the runs' excesses.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vae_qc import api
from vae_qc import config as config_lib
from vae_qc import data as data_lib
from vae_qc import evaluate
from vae_qc import metrics
from vae_qc import predict
from vae_qc import scales as scales_lib
from vae_qc import scores as scores_lib
from vae_qc.errors import ConfigError, DataError

# Fields of config.data that may differ between fused runs: how each model cuts patches.
MODEL_DATA_FIELDS = ('data.patch_size', 'data.tile_size', 'data.tile_stride', 'data.augment',
                     'data.zoom', 'data.scales')


def check_runs(configs: Sequence[Any], workdirs: Sequence[str]) -> None:
  """ConfigError unless the runs score one test set (their ``config.data`` agree but for
  :data:`MODEL_DATA_FIELDS`) with maps of one name (``config.eval.map``)."""
  if len(configs) < 2:
    raise ConfigError(f'fusion needs two runs or more, got {len(configs)}: {list(workdirs)}.')
  first = configs[0]
  for config, workdir in zip(configs[1:], workdirs[1:]):
    changed = [f for f in config_lib.changed_fields({'data': first.data.to_dict()},
                                                    {'data': config.data.to_dict()}, safe=())
               if f not in MODEL_DATA_FIELDS]
    if changed:
      raise ConfigError(f'{workdir} was trained on other data than {workdirs[0]} '
                        f'({", ".join(changed)} differ); fuse runs of one data set.')
    if config.eval.map != first.eval.map:
      raise ConfigError(f'{workdir} maps {config.eval.map!r}, {workdirs[0]} '
                        f'{first.eval.map!r}: fused maps must be in one unit; rescore one run '
                        'with the other\'s config.eval.map.')


def _figures(maps, dataset, topk: int, extra) -> dict[str, Any]:
  """Image AUROC (top-k mean plus ``extra`` [N], the level excess), pixel AUROC and AUPRO of
  maps [N, H, W] (or a list), overall and per defect kind."""
  if dataset.test_has_mask is None or dataset.test_masks is None:
    raise DataError('the runs\' test set has no masks: fusion is measured against them.')
  maps = np.stack(maps)  # the masks [N, H, W] are one array: so are the maps
  labels, groups = dataset.test_labels, dataset.test_groups
  image_scores = np.array([scores_lib.top_k_mean(m, topk) for m in maps]) + extra
  overall, pixel = metrics.pixel_metrics_per_defect(maps, dataset.test_masks,
                                                    dataset.test_has_mask, labels, groups)
  image = metrics.metrics_per_defect(image_scores, labels, groups)
  return {'image_auroc': metrics.auroc(image_scores, labels), 'pixel_auroc': overall['auroc'],
          'aupro': overall['aupro'],
          'per_defect': {g: {'image_auroc': image[g]['auroc'],
                             **{f'pixel_{k}': v for k, v in pixel.get(g, {}).items()}}
                         for g in image}}


def evaluate_fusion(workdirs: Sequence[str]) -> dict[str, Any]:
  """Figures of each run's map and of their per-pixel mean on the runs' test set:
  {'map': name, 'runs': {workdir: figures}, 'fused': figures}, figures = {'image_auroc',
  'pixel_auroc', 'aupro', 'per_defect': {kind: {'image_auroc', 'pixel_auroc', 'pixel_aupro'}}}
  (the pixel figures of a kind whose masks are all empty are left out)."""
  configs = [predict.read_config(w) for w in workdirs]
  check_runs(configs, workdirs)
  dataset = data_lib.load(configs[0].data)
  images = dataset.test_images
  map_name, topk = configs[0].eval.map, int(configs[0].eval.map_topk)
  run_maps, excess = {}, {}
  for workdir in workdirs:
    run = api.load_run(workdir)
    maps = run.maps(images)
    run_maps[workdir] = [np.asarray(m, np.float64) for m in maps[map_name]]
    excess[workdir] = evaluate.level_excess(run.scorer, maps)
  fused = scales_lib.mean_of([run_maps[w] for w in workdirs])  # lists of [H, W]: a list
  return {'map': map_name, 'topk': topk,
          'runs': {w: _figures(m, dataset, topk, excess[w]) for w, m in run_maps.items()},
          'fused': _figures(fused, dataset, topk, np.mean([excess[w] for w in workdirs], 0))}
