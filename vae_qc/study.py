"""An anomaly-detection study end to end: data → training → scores → metrics → report.

``train_and_evaluate(config, workdir)`` writes the workdir that the README describes:
config.json, model.json, metrics.jsonl, checkpoints/, results.json, scores.csv and plots/.
Re-running the same command resumes training from the last checkpoint and rewrites the
report. The MNIST and print studies differ only in their data (and so in whether there are
pixel masks to localise against).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from vae_qc import aux as aux_lib
from vae_qc import budget as budget_lib
from vae_qc import calibration as calibration_lib
from vae_qc import data as data_lib
from vae_qc import evaluate
from vae_qc import level as level_lib
from vae_qc import likelihoods
from vae_qc import metrics
from vae_qc import models
from vae_qc import parallel as parallel_lib
from vae_qc import position as position_lib
from vae_qc import progress as progress_lib
from vae_qc import report as report_lib
from vae_qc import scales as scales_lib
from vae_qc import score_cache
from vae_qc import scores as scores_lib
from vae_qc import thresholds
from vae_qc import train as train_lib
from vae_qc import viz
from vae_qc import workdir as wd
from vae_qc.data import texture
from vae_qc.data import tiling as tiling_lib
from vae_qc.errors import ConfigError, VaeQcError


@dataclasses.dataclass
class Validation:
  """Images that choose the decision threshold (never used to measure it)."""
  images: np.ndarray  # [V, H, W, C]
  labels: np.ndarray  # [V] (all 0 for normal-only validation)
  source: str  # 'train' (held out of training) or 'test' (a part of the test set)
  test_index: np.ndarray | None  # [V] positions in the test set, for source 'test'


def split_validation(dataset: data_lib.Dataset, threshold_cfg, seed: int):
  """(dataset without the validation images where they came from training, Validation)."""
  if threshold_cfg is None or threshold_cfg.method == 'none':
    return dataset, None
  if threshold_cfg.val_source == 'train':
    rest, val = thresholds.split_indices(np.zeros(len(dataset.train_images)),
                                         threshold_cfg.val_fraction, seed)
    v = Validation(dataset.train_images[val], np.zeros(len(val), np.int32), 'train', None)
    return dataclasses.replace(dataset, train_images=dataset.train_images[rest]), v
  _, val = thresholds.split_indices(dataset.test_labels, threshold_cfg.val_fraction, seed)
  return dataset, Validation(dataset.test_images[val], dataset.test_labels[val], 'test', val)


def model_info(model_cfg: models.ModelConfig, config: ml_collections.ConfigDict,
               image_scale: float = 1.0) -> dict[str, Any]:
  """What ``predict.py`` needs to rebuild the model and read new images like training did
  (``image_scale``: the factor the study's images were resampled by, vae_qc.data.texture)."""
  return {'model': dataclasses.asdict(model_cfg),
          'channels': int(model_cfg.image_shape[-1]),
          'image_size': config.data.get('image_size', 0),
          'resize_mode': config.data.get('resize_mode', 'resize'),
          'image_scale': float(image_scale),
          'patch_size': int(config.data.get('patch_size', 0) or 0),
          'tiling': dataclasses.asdict(tiling_lib.Tiling.from_config(config.data, model_cfg.arch)),
          'scales': [{'dir': scales_lib.dirname(p), 'patch_size': p}
                     for p, _ in scales_lib.parse(config)]}


def _threshold(results, config, scorer, variables, values, dataset, val, tiling,
               with_maps: bool = False):
  """Chooses the threshold on ``val`` and records it in ``results['threshold']``; returns the
  verdicts [N] (1: score >= threshold) of the test images and, when ``val`` are held-out
  training images scored here and ``with_maps``, their maps (else None), which the pixel
  threshold reuses."""
  tc = config.threshold
  name = tc.score or config.eval.scores[0]
  if name not in values:
    raise thresholds.ConfigError(f'config.threshold.score {name!r} is not in config.eval.scores.')
  val_maps = None
  if val.source == 'test':
    val_values = {k: v[val.test_index] for k, v in values.items()}
    holdout = np.setdiff1d(np.arange(len(dataset.test_labels)), val.test_index)
  else:
    val_values, val_maps = evaluate.score_images(scorer, variables, val.images, tiling,
                                                 with_maps=with_maps,
                                                 keep_maps=(config.eval.map,))
    holdout = np.arange(len(dataset.test_labels))
  value = thresholds.choose(tc.method, val_values[name], val.labels, tc.quantile)
  verdicts = (values[name] >= value).astype(np.int32)
  results['threshold'] = {
      'method': tc.method, 'score': name, 'value': value, 'quantile': tc.quantile,
      'validation': {'source': val.source, 'fraction': tc.val_fraction, 'n': int(len(val.labels)),
                     'n_anomalous': int(np.sum(val.labels))},
      'test_at_threshold': thresholds.at_threshold(values[name][holdout],
                                                   dataset.test_labels[holdout], value),
      'test_at_threshold_n': int(len(holdout))}
  return verdicts, val_maps


def _pixel_results(results, config, scorer, variables, dataset, maps, val, tiling,
                   val_maps=None):
  """Pixel AUROC / AUPRO overall and per defect; the predicted-mask threshold (from
  ``val_maps``, the maps of ``val``'s images, when the threshold step made them)."""
  amap = np.asarray(maps[config.eval.map])
  use, labels = dataset.test_has_mask, dataset.test_labels
  defects = set(np.asarray(dataset.test_groups)[labels == 1])
  progress = progress_lib.Progress(1 + len(defects), 'pixel metrics', unit='set')
  overall, per_defect = metrics.pixel_metrics_per_defect(
      amap, dataset.test_masks, use, labels, dataset.test_groups, on_set=progress.update)
  progress.finish()
  results['pixel'] = {'map': config.eval.map, **overall, 'n_images': int(use.sum())}
  for g, figures in per_defect.items():
    results.setdefault('per_defect', {}).setdefault(g, {})['pixel'] = figures
  if val is not None:
    if val_maps is None:  # the threshold step did not map them: map the good ones
      _, normal_maps = evaluate.score_images(scorer, variables, val.images[val.labels == 0],
                                             tiling, with_maps=True,
                                             keep_maps=(config.eval.map,))
      normal_maps = np.asarray(normal_maps[config.eval.map])
    else:
      normal_maps = np.asarray(val_maps[config.eval.map])[val.labels == 0]
    value = float(np.quantile(normal_maps, config.threshold.pixel_quantile))
    results['pixel']['threshold'] = {'value': value, 'method': 'normal_quantile',
                                     'quantile': config.threshold.pixel_quantile,
                                     'source': val.source}
    return value
  return float(np.quantile(amap[labels == 0], 0.99))


def _write_scores_csv(path: str, ids, labels, groups, values: dict[str, np.ndarray],
                      extra_columns: dict[str, np.ndarray] | None = None) -> None:
  """One row per image: id, label, group, every score, then ``extra_columns``."""
  columns = dict(values, **(extra_columns or {}))
  wd.write_csv(path, ['id', 'label', 'group'] + list(columns),
               ([i, int(y), g] + [columns[n][j] for n in columns]
                for j, (i, y, g) in enumerate(zip(ids, labels, groups))))


def report(workdir: str, config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
           scorer: evaluate.Scorer, variables, val: Validation | None = None,
           tiling: tiling_lib.Tiling = tiling_lib.Tiling(), extra: dict[str, Any] | None = None,
           is_writer: bool = True) -> dict[str, Any]:
  """Scores the test set and writes results.json, scores.csv and plots/. Returns results.

  Multi-process: every process scores (collectively); only the writer writes files.
  """
  t0 = time.time()
  has_masks = dataset.test_masks is not None and bool(np.any(dataset.test_masks))
  values, maps = evaluate.score_images(scorer, variables, dataset.test_images, tiling,
                                       with_maps=has_masks,  # the maps read below
                                       keep_maps=(config.eval.map, 'reconstruction'))
  labels = dataset.test_labels
  _check_finite(values, dataset.test_ids)
  results: dict[str, Any] = {
      'scores': evaluate.score_metrics(values, labels),
      'n_normal': int(np.sum(labels == 0)),
      'n_anomalous': int(np.sum(labels == 1)),
      'data': dataset.info,
      'eval': dataclasses.asdict(scorer.settings),
  }
  likelihood = likelihoods.get(scorer.model_cfg.likelihood, scorer.model_cfg.sigma)
  num_dims = int(np.prod(np.shape(dataset.test_images[0]) if tiling.size or
                         scorer.model_cfg.arch == 'spatial' else scorer.model_cfg.image_shape))
  if likelihood.support != 'binary':
    # Code length of the 8-bit normal / anomalous test images under the model (bits/dim).
    offset = likelihoods.log_prob_8bit_offset(likelihood, num_dims)
    results['bits_per_dim'] = {
        name: {kind: float(np.mean(scores_lib.bits_per_dim(-values[name][labels == y] + offset,
                                                           num_dims)))
               for kind, y in (('normal', 0), ('anomalous', 1))}
        for name in ('neg_log_px', 'neg_elbo') if name in values}
  groups = sorted(set(g for g, y in zip(dataset.test_groups, labels) if y == 1))
  if len(groups) > 1:
    per = {name: metrics.metrics_per_defect(v, labels, dataset.test_groups)
           for name, v in values.items()}
    results['per_defect'] = {g: {'image': {name: per[name][g] for name in per}} for g in groups}
  if dataset.val_images is not None:  # the selection validation set (MNIST)
    val_values, _ = evaluate.score_images(scorer, variables, dataset.val_images, tiling)
    results['validation'] = {
        'scores': evaluate.score_metrics(val_values, dataset.val_labels),
        'n_normal': int(np.sum(dataset.val_labels == 0)),
        'n_anomalous': int(np.sum(dataset.val_labels == 1))}
    if is_writer:
      _write_scores_csv(os.path.join(workdir, 'val_scores.csv'), dataset.val_ids,
                        dataset.val_labels, dataset.val_groups, val_values)
  verdicts = val_maps = None
  if val is not None:
    verdicts, val_maps = _threshold(results, config, scorer, variables, values, dataset, val,
                                    tiling, with_maps=has_masks)
  pixel_threshold = None
  if has_masks:
    pixel_threshold = _pixel_results(results, config, scorer, variables, dataset, maps, val,
                                     tiling, val_maps)
  results['eval']['seconds'] = time.time() - t0
  results.update(extra or {})
  if is_writer:
    extra_columns = {}
    if verdicts is not None:
      in_val = np.zeros(len(labels), bool)
      if val is not None and val.test_index is not None:
        in_val[val.test_index] = True
      extra_columns = {'verdict': verdicts.astype(int), 'threshold_validation': in_val.astype(int)}
    _write_scores_csv(os.path.join(workdir, 'scores.csv'), dataset.test_ids, labels,
                      dataset.test_groups, values, extra_columns)
    wd.write_json(os.path.join(workdir, 'results.json'), results)
  _plots(workdir, config, dataset, scorer, variables, values, maps, results, pixel_threshold,
         tiling, is_writer)
  if is_writer:
    report_lib.write_study_report(workdir)
  return results


def _check_finite(values: dict[str, np.ndarray], ids: list[str]) -> None:
  """VaeQcError naming the test images whose scores are not finite (metrics need them)."""
  bad = {name: [ids[i] for i in np.flatnonzero(~np.isfinite(np.asarray(v, np.float64)))]
         for name, v in values.items()}
  bad = {name: where for name, where in bad.items() if where}
  if bad:
    detail = '; '.join(f'{name}: {", ".join(where[:5])}' + (f' (+{len(where) - 5} more)'
                                                           if len(where) > 5 else '')
                       for name, where in bad.items())
    raise VaeQcError(
        f'the model gave non-finite scores to test images ({detail}). The trained model is '
        'kept in the checkpoints; look at those images (scores of one image can be read with '
        "vae_qc.load_run(workdir).score(...)), or drop them from the test set and run the same "
        'command again: training is not repeated.')


def _plots(workdir, config, dataset, scorer, variables, values, maps, results, pixel_threshold,
           tiling, is_writer=True):
  plots = os.path.join(workdir, 'plots')
  labels = dataset.test_labels
  first = (results.get('threshold') or {}).get('score') or config.eval.scores[0]
  n = config.eval.num_plot_images
  if maps is not None:  # localisation: the most and least anomalous images
    order = np.argsort(values[first])
    picks = [(i, 'most') for i in order[::-1][:n]] + [(i, 'least') for i in order[:n]]
    amap = maps[config.eval.map]
    rows = [dict(image=dataset.test_images[i], reconstruction=maps['reconstruction'][i],
                 map=np.asarray(amap[i]), gt=dataset.test_masks[i],
                 pred=np.asarray(amap[i]) >= pixel_threshold,
                 title=f'{tag} anomalous: {dataset.test_groups[i]} ({values[first][i]:.1f})')
            for i, tag in picks]
  else:
    rows = []
    for label, name in ((0, 'normal'), (1, 'anomalous')):
      idx = np.nonzero(labels == label)[0]
      order = idx[np.argsort(values[first][idx])]
      for tag, pick in (('least', order[:n]), ('most', order[::-1][:n])):
        x = dataset.test_images[pick]
        _, m = evaluate.score_images(scorer, variables, x, tiling, with_maps=True)
        rows.append((f'{name}\n{tag} {first}', x, m['reconstruction']))
  if not is_writer:
    return
  thr = {first: results['threshold']['value']} if 'threshold' in results else None
  viz.roc_curves(values, labels, os.path.join(plots, 'roc.png'))
  viz.histograms(values, labels, os.path.join(plots, 'histograms.png'), thr)
  if maps is not None:
    viz.anomaly_gallery(rows, os.path.join(plots, 'localisation.png'), config.eval.map)
  else:
    viz.reconstruction_grid(rows, os.path.join(plots, 'reconstructions.png'))
  if maps is not None:  # every test image: input | map | where, for report.html
    names = report_lib.write_thumbnails(os.path.join(plots, 'images'), dataset.test_ids,
                                        dataset.test_images, amap, pixel_threshold)
    wd.write_json(os.path.join(plots, 'images', 'index.json'), names)
  if 'per_defect' in results:
    viz.roc_per_group(values[first], labels, dataset.test_groups,
                      os.path.join(plots, 'roc_per_defect.png'), first)


def _patch_model_config(config, patch: int, images_shape) -> models.ModelConfig:
  """The model of ``patch``×``patch`` training patches, with errors that name the fields."""
  _, height, width, channels = images_shape
  if patch > min(height, width):
    raise ConfigError(
        f'config.data.patch_size={patch} is larger than the training images ({height}x{width}); '
        'choose a smaller patch or larger images (config.data.image_size).')
  f = 2 ** len(config.model.blocks)
  if patch % f:
    raise ConfigError(
        f'config.data.patch_size={patch} does not fit the model: it must be divisible by '
        f'2**len(config.model.blocks) = {f} (blocks {tuple(config.model.blocks)}); try '
        f'{max(f, patch // f * f)}.')
  return train_lib.model_config(config, (patch, patch, channels))


def _patch_transform(config):
  """The batch transform of a patch model: random ``config.data.patch_size`` patches, drawn
  afresh every step as a function of (seed, step) (data/tiling.random_patches)."""
  patch, augment = int(config.data.patch_size), config.data.get('augment', 'none')
  zoom = config.data.get('zoom', 1.0)  # checked by train_and_evaluate and random_patches
  return lambda batch, step: tiling_lib.random_patches(batch, patch, config.seed, step, augment,
                                                       zoom)


def _fit(config, directory: str, train_images: np.ndarray, model_cfg, par, transform,
         schedule=None, deadline: budget_lib.Deadline | None = None):
  """Trains (or resumes) ``model_cfg`` on ``train_images`` in ``directory`` for
  ``config.train``'s length; (its TrainState, the compiled step, None where its rate follows
  a replanned ``schedule``). ``schedule``: a time budget's (vae_qc.budget), the main
  model's; ``deadline``: its checks, which may shorten the run as it trains (the plan they
  change is read by the caller)."""
  step_fn = None
  while True:
    total = train_lib.num_steps(config.train, len(train_images))
    if step_fn is None:
      optimizer = train_lib.make_optimizer(config.train, total, schedule)
      step_fn = train_lib.compile_train_step(model_cfg, optimizer, config.train.num_samples,
                                             shardings=par.train_step_shardings)
    stop = deadline.next_stop() if deadline is not None else None
    state = train_lib.train(config, directory, train_images, model_cfg, step_fn=step_fn,
                            put_batch=par.put_batch, put_state=par.replicate,
                            is_writer=par.is_writer, transform=transform, optimizer=optimizer,
                            stop_at=stop, on_log=deadline.observe if deadline else None)
    if stop is None or int(state.step) >= total:
      return state, (step_fn if schedule is None or len(schedule) < 2 else None)
    if deadline.check(int(state.step)):  # fewer steps: a new end for the cosine
      config = budget_lib.planned_config(config, deadline.plan)
      schedule, step_fn = deadline.plan['schedule'], None


def _passes(settings, name: str, mcfg) -> tuple[int, ...]:
  """The samples K of each pass evaluation makes through the model ``name`` ('' for the main
  one): the map pass, and the score pass where the map pass does not give the tile scores."""
  if name or settings.one_pass(mcfg):
    return (settings.map_samples,)
  return (settings.map_samples, settings.elbo_samples)


def _budget_probes(config, model_cfg, transform, settings, train_shape, eval_images
                   ) -> list[budget_lib.Probe]:
  """The models of the run a time budget times (vae_qc.budget): the main one and each of
  config.data.scales, each with what evaluation passes through it: ``eval_images`` (the map
  calibration's, the test images and held-out validation ones) as tiles of its window, or
  whole in units of its input's pixels; each pass's samples (:func:`_passes`), with the
  configured evaluation and with the budget's cheaper ones (budget.cheap_evals); and the
  settings of one map sample, with which the budget times a map pass of each model."""
  options = [dataclasses.replace(settings, **o) for o in budget_lib.cheap_evals(config.eval)]
  cheap_settings = options[0] if options else None
  cheapest = options[1] if len(options) > 1 else None  # one sample, where the first is a pair
  one_sample = dataclasses.replace(settings, map_samples=1)  # the map pass the probe times
  models_ = [('', config, model_cfg, transform)] + [
      (name, cfg, mcfg, _patch_transform(cfg))
      for name, cfg, mcfg in _scale_models(config, train_shape)]
  probes = []
  for name, cfg, mcfg, tr in models_:
    tiling = tiling_lib.Tiling.from_config(cfg.data, mcfg.arch)
    h, w = mcfg.image_shape[:2]
    inputs = sum(tiling_lib.num_tiles(*np.shape(im)[:2], tiling.size, tiling.stride)
                 if tiling.size else int(np.ceil(np.prod(np.shape(im)[:2]) / (h * w)))
                 for im in eval_images)
    probes.append(budget_lib.Probe(
        name, mcfg, cfg.train, tr, inputs, _passes(settings, name, mcfg),
        _passes(cheap_settings, name, mcfg) if cheap_settings else None,
        _passes(cheapest, name, mcfg) if cheapest else None, one_sample))
  return probes


def _eval_images(dataset, val, settings) -> list[np.ndarray]:
  """The images evaluation maps: the map calibration's, the test images and validation
  images held out of training."""
  fit = list(calibration_lib.fit_images(dataset.train_images)) if _fits_on_training(settings) \
      else []
  held_out = list(_held_out(val))
  level = held_out if _level_on_held_out(settings) else []  # mapped once more: the level's fit
  return fit + list(dataset.test_images) + held_out + level


def _level_on_held_out(settings) -> bool:
  return settings.uses_level and settings.map_level_images == 'held_out'


def _fits_on_training(settings) -> bool:
  """A table of the map is fitted on training images: its calibration, its position table
  or its level (unless that is fitted on held-out images)."""
  return settings.calibrated or settings.map_position or (
      settings.uses_level and not _level_on_held_out(settings))


def _held_out(val) -> np.ndarray:
  """[V, H, W, C] the good images held out of training for the threshold (none: [0])."""
  if val is None or val.source != 'train':
    return np.zeros((0,))
  return val.images[val.labels == 0]


def _scale_models(config, images_shape):
  """(directory name, config, model config) of each further patch model of
  ``config.data.scales`` (vae_qc.scales), the model's size checked against the images."""
  for patch, stride in scales_lib.parse(config):
    cfg = scales_lib.scale_config(config, patch, stride)
    yield scales_lib.dirname(patch), cfg, _patch_model_config(cfg, patch, images_shape)


def _train_scales(config, workdir: str, train_images: np.ndarray, settings, par,
                  allow_config_change: bool, image_scale: float) -> list[scales_lib.Scale]:
  """Trains (or resumes) the further patch models of ``config.data.scales``, each in its
  own run directory ``workdir/scale_p<size>`` (vae_qc.scales); returns them, ready to map."""
  out = []
  for name, cfg, model_cfg in _scale_models(config, train_images.shape):
    directory = os.path.join(workdir, name)
    patch, stride = cfg.data.patch_size, cfg.data.tile_stride
    train_lib.prepare_workdir(directory, cfg, allow_config_change, is_writer=par.is_writer)
    if par.is_writer:
      wd.write_json(os.path.join(directory, 'model.json'),
                    model_info(model_cfg, cfg, image_scale))
    logging.info('Scale %s: %dx%d patches, scored every %d px, in %s.', name, patch, patch,
                 stride, directory)
    state, _ = _fit(cfg, directory, train_images, model_cfg, par, _patch_transform(cfg))
    out.append(scales_lib.Scale(name, evaluate.Scorer(model_cfg, settings, parallel=par),
                                tiling_lib.Tiling.from_config(cfg.data, model_cfg.arch),
                                par.to_host(state.variables)))
  return out


def _run_dirs(workdir: str, scorer) -> list[str]:
  """The run's directory and each of its scales' (the main model's first)."""
  return [workdir] + [os.path.join(workdir, sc.name) for sc in scorer.scales]


def _fit_map_tables(workdir: str, scorer, variables, train_images, tiling, is_writer: bool,
                    held_out: np.ndarray) -> None:
  """Fits what the configured map needs of good images: the map calibration of the model and
  of each scale (a calibrated map), the position calibration (config.eval.map_position) and
  the level calibration (config.eval.map_level), on (at most calibration.MAX_FIT_IMAGES of)
  the training images, mapped once (only when one of them needs them); the level on
  ``held_out`` [V, H, W, C] instead, the good images held out of training, when
  config.eval.map_level_images = 'held_out'. Saves each in its run directory for
  ``predict.py``."""
  settings = scorer.settings
  images = calibration_lib.fit_images(train_images)
  maps = evaluate.fit_maps(scorer, variables, images, tiling) if _fits_on_training(settings) \
      else None
  if settings.calibrated:
    cals = evaluate.fit_calibration(scorer, maps)
    for directory, cal in zip(_run_dirs(workdir, scorer), cals):
      logging.info('Map calibration (%s): fitted on %d training images; good residual %.3g '
                   'in the flattest gradient bin, %.3g in the steepest.', directory,
                   len(images), cal.expected[0], cal.expected[-1])
      if is_writer:
        calibration_lib.save(directory, cal)
  if settings.map_position:
    positions = evaluate.fit_position(scorer, maps)
    pos = positions[0]
    iy, ix = pos.inner
    logging.info('Position calibration (%s): fitted on %d training images; good %s %.3g ± '
                 '%.3g at the corners, %.3g ± %.3g inside.', workdir, len(images),
                 settings.map, pos.mean[0, 0], pos.sd[0, 0], pos.mean[iy, ix], pos.sd[iy, ix])
    if is_writer:
      for directory, pos in zip(_run_dirs(workdir, scorer), positions):
        position_lib.save(directory, pos)
  if settings.uses_level:
    source = settings.map_level_images
    if source == 'held_out':
      maps = evaluate.fit_maps(scorer, variables, held_out, tiling)
    levels = evaluate.fit_level(scorer, maps, source)
    logging.info('Level calibration (%s): fitted on %d %s; log median residual '
                 '%.3f, within %.3f of it (two-sided, w = %g).', workdir, levels[0].n,
                 level_lib.SOURCES[source], levels[0].mean, levels[0].tolerance,
                 levels[0].low_weight)
    if is_writer:
      for directory, level in zip(_run_dirs(workdir, scorer), levels):
        level_lib.save(directory, level)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False,
                       parallel: parallel_lib.Parallel | None = None) -> dict[str, Any]:
  """Runs the study of ``config`` in ``workdir``; returns the results dict.

  Training and scoring are data parallel over ``parallel`` (default: ``config.parallel``,
  i.e. every device of every process; one device is the trivial case).
  """
  par = parallel or parallel_lib.setup(config)  # before any other JAX computation
  settings = evaluate.EvalSettings.from_config(config.eval)  # fail on bad config early
  threshold_cfg = config.get('threshold')
  if threshold_cfg is not None:
    thresholds.check(threshold_cfg)
  arch = config.model.get('arch', 'global')
  tiling = tiling_lib.Tiling.from_config(config.data, arch)
  patch = int(config.data.get('patch_size', 0) or 0)
  augment = config.data.get('augment', 'none')
  tiling_lib.check_augment(augment)
  if augment != 'none' and not patch:
    raise ConfigError(f"config.data.augment={augment!r} mirrors the random training patches; set "
                      "config.data.patch_size > 0 as well, or config.data.augment='none'.")
  zoom = tiling_lib.check_zoom(config.data.get('zoom', 1.0))
  if zoom != 1.0 and not patch:
    raise ConfigError(f'config.data.zoom={zoom} zooms the random training patches; set '
                      'config.data.patch_size > 0 as well, or config.data.zoom=1.')
  texture.check_max_period(config.data.get('max_period', 0.0))
  par.check_batch_size(config.train.batch_size, 'config.train.batch_size')
  train_lib.check_length(config.train)
  budget_s = budget_lib.check(config.train)
  scale_sizes = scales_lib.parse(config)
  train_lib.prepare_workdir(workdir, config, allow_config_change, is_writer=par.is_writer)
  dataset = data_lib.load(config.data)
  dataset, val = split_validation(dataset, threshold_cfg, config.data.seed)
  if _level_on_held_out(settings) and not len(_held_out(val)):
    raise ConfigError("config.eval.map_level_images='held_out' fits the level on the good "
                      'images that the threshold holds out of training, and this run holds none '
                      "out: set config.threshold.method='normal_quantile' with "
                      "config.threshold.val_source='train' (the defaults), or "
                      "config.eval.map_level_images='training'.")
  train_images, transform = dataset.train_images, None
  if patch:  # random patches drawn afresh every step (data/tiling.random_patches)
    model_cfg = _patch_model_config(config, patch, train_images.shape)
    for p, _ in scale_sizes:  # before training: a further scale that cannot fit the model
      _patch_model_config(config, p, train_images.shape)
    transform = _patch_transform(config)
    evaluate.check_images(train_images, train_images.shape[1:], 'training images')
  else:
    if tiling.size:
      train_images, _ = tiling.tiles(train_images)
    model_cfg = train_lib.model_config(config, train_images.shape[1:])
    evaluate.check_images(train_images, model_cfg.image_shape, 'training images')
  scores_lib.check_compatible(settings.scores,  # before training, not after
                              likelihoods.get(model_cfg.likelihood, model_cfg.sigma),
                              int(np.prod(model_cfg.image_shape)))
  image_scale = dataset.info.get('image_scale', 1.0)  # vae_qc.data.texture; 1: none
  if par.is_writer:
    wd.write_json(os.path.join(workdir, 'model.json'), model_info(model_cfg, config, image_scale))
  t0 = time.time()
  plan = deadline = None
  if budget_s:  # train.steps as planned (vae_qc.budget)
    plan = budget_lib.plan(config, workdir, train_images, _budget_probes(
        config, model_cfg, transform, settings, dataset.train_images.shape,
        _eval_images(dataset, val, settings)), par)
    deadline = budget_lib.Deadline.start(plan, workdir, par, since=t0)
    config = budget_lib.planned_config(config, plan)
  state, step_fn = _fit(config, workdir, train_images, model_cfg, par, transform,
                        schedule=plan and plan.get('schedule'), deadline=deadline)
  if plan is not None:  # as planned, and as the checks while the main model trained changed it
    config = budget_lib.planned_config(config, plan)
    settings = evaluate.EvalSettings.from_config(config.eval)  # the plan's evaluation
  scales = _train_scales(config, workdir, train_images, settings, par, allow_config_change,
                         image_scale)
  train_s = time.time() - t0
  scorer = evaluate.Scorer(model_cfg, settings, parallel=par, scales=scales)
  variables = par.to_host(state.variables)
  aux = {}
  needed = scores_lib.needed_aux(settings.scores)
  if 'background' in needed:  # Ren et al.'s background model, beside the main one
    aux['background'] = aux_lib.train_background(
        config, workdir, train_images, model_cfg, transform, step_fn=step_fn,
        put_batch=par.put_batch, put_state=par.replicate, is_writer=par.is_writer,
        allow_config_change=allow_config_change, to_host=par.to_host)
  if 'latent_gmm' in needed:
    aux['latent_gmm'] = aux_lib.fit_latent_gmm(model_cfg, variables, train_images,
                                               settings.latent_components, patch, config.seed)
  if aux:
    variables = dict(variables, aux=aux)
    if par.is_writer:
      aux_lib.save(workdir, aux)
  if settings.fitted_tables:
    _fit_map_tables(workdir, scorer, variables, dataset.train_images, tiling, par.is_writer,
                    _held_out(val))
  score_cache.attach(scorer, workdir, variables, dataset, config, step=int(state.step))
  results = report(workdir, config, dataset, scorer, variables, val, tiling,
                   extra={'train': {'steps': int(state.step), 'seconds': train_s,
                                    'images': int(len(train_images)),
                                    'skipped_updates': int(state.num_skipped),
                                    **({'plan': plan} if plan else {})},
                          'parallel': {'devices': par.num_devices,
                                       'processes': par.process_count}},
                   is_writer=par.is_writer)
  score_cache.release(workdir, config, par)
  for name, m in results['scores'].items():
    logging.info('%-28s AUROC %.4f  AUPRC %.4f  F1-max %.4f  FPR@95 %.4f', name, m['auroc'],
                 m['auprc'], m['f1_max'], m['fpr_at_95_tpr'])
  if 'pixel' in results:
    logging.info('pixel AUROC %.4f  AUPRO %.4f (%s map)', results['pixel']['auroc'],
                 results['pixel']['aupro'], results['pixel']['map'])
  return results
