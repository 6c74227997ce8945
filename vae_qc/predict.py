"""Scoring new images with a trained run (the engine of ``experiments/predict.py``).

The run's ``model.json`` says how training read its images; its config the scores and the
evaluation seed; its ``results.json`` the decision threshold. New images go through
:func:`vae_qc.evaluate.score_images`, the function behind the run's own evaluation.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image

from vae_qc import aux as aux_lib
from vae_qc import budget as budget_lib
from vae_qc import calibration as calibration_lib
from vae_qc import evaluate
from vae_qc import level as level_lib
from vae_qc import models
from vae_qc import parallel as parallel_lib
from vae_qc import position as position_lib
from vae_qc import progress
from vae_qc import report as report_lib
from vae_qc import scales as scales_lib
from vae_qc import scores as scores_lib
from vae_qc import train as train_lib
from vae_qc import workdir as wd
from vae_qc.data import folder
from vae_qc.data import texture
from vae_qc.data import tiling as tiling_lib
from vae_qc.errors import DataError, VaeQcError


def check_run(workdir: str) -> None:
  """Raises VaeQcError unless ``workdir`` holds a trained run (config.json, model.json)."""
  if not os.path.isdir(workdir):
    raise VaeQcError(f'{workdir} does not exist. Pass the --workdir of a finished '
                     'experiments/*_anomaly.py run.')
  for name in ('config.json', 'model.json'):
    if not os.path.exists(os.path.join(workdir, name)):
      raise VaeQcError(f'{workdir} is not a trained run: {name} is missing. Pass the --workdir '
                       'of a finished experiments/*_anomaly.py run.')


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's saved config (``config.json``), as its time budget's plan trained and
  evaluated it (``train_plan.json``, vae_qc.budget)."""
  check_run(workdir)
  config = ml_collections.ConfigDict(wd.read_json(os.path.join(workdir, 'config.json')))
  return budget_lib.planned_config(config, budget_lib.read(workdir, config))


def load_run(workdir: str):
  """(config, model_cfg, variables, model_info) of a trained run."""
  config = read_config(workdir)
  try:
    info = wd.read_json(os.path.join(workdir, 'model.json'))
    model_cfg = models.ModelConfig(**info['model'])  # lists from the JSON become tuples
    optimizer = train_lib.make_optimizer(config.train)
  except (KeyError, TypeError, AttributeError, ValueError) as e:
    if isinstance(e, VaeQcError):
      raise
    raise VaeQcError(f'{workdir} is not a trained run of this version: model.json or '
                     f'config.json lacks {e}. Re-run the study that made it.') from e
  state = train_lib.restore_latest(os.path.join(workdir, 'checkpoints'), model_cfg, optimizer,
                                  config.train)
  if state is None:
    raise VaeQcError(f'{workdir}/checkpoints holds no checkpoint; train the run first.')
  variables = jax.device_get(state.variables)
  needed = scores_lib.needed_aux(tuple(config.eval.scores))
  if needed:  # what the run's scores need beside the model (latent mixture, background)
    variables = dict(variables, aux=aux_lib.load(workdir, config, model_cfg, needed))
  return config, model_cfg, variables, info


def run_threshold(workdir: str) -> tuple[dict[str, Any] | None, float | None]:
  """(the run's image threshold ``results.json['threshold']``, its pixel threshold) or Nones."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return None, None
  results = wd.read_json(path)
  pixel = (results.get('pixel') or {}).get('threshold') or {}
  return results.get('threshold'), pixel.get('value')


def list_images(images_dir: str) -> list[pathlib.Path]:
  """The image files under ``images_dir`` (recursively, sorted); DataError if none."""
  root = pathlib.Path(images_dir)
  if not root.is_dir():
    raise DataError(f'image folder {images_dir} does not exist.')
  files = sorted(p for p in root.rglob('*')
                 if folder.is_file_entry(p) and not p.name.startswith('.'))
  paths = [p for p in files if p.suffix.lower() in folder.IMAGE_EXTENSIONS]
  others = [p for p in files if p.suffix.lower() not in folder.IMAGE_EXTENSIONS]
  if not paths:
    raise DataError(f'no images ({", ".join(folder.IMAGE_EXTENSIONS)}) under {images_dir}'
                    + (f' ({len(others)} other files, e.g. {others[0].name})' if others else '')
                    + '.')
  if others:
    logging.info('Ignored %d file(s) under %s that are not %s images (the first: %s).',
                 len(others), images_dir, ', '.join(folder.IMAGE_EXTENSIONS), others[0])
  return paths


def load_scales(workdir: str, info, settings: evaluate.EvalSettings, parallel=None
                ) -> list[scales_lib.Scale]:
  """The further patch models of a multi-scale run (model.json's 'scales', each a run
  directory inside ``workdir``), scored with the run's own evaluation ``settings``."""
  out = []
  for scale in info.get('scales') or ():
    _, model_cfg, variables, scale_info = load_run(os.path.join(workdir, scale['dir']))
    scorer = evaluate.Scorer(model_cfg, settings, parallel=parallel)
    out.append(scales_lib.Scale(scale['dir'], scorer, tiling_lib.Tiling(**scale_info['tiling']),
                                variables))
  return out


def scorer_for(config, model_cfg, info, parallel=None, workdir: str | None = None):
  """(Scorer, Tiling) of the run in ``workdir``: its evaluation settings and its further
  scales (vae_qc.scales; they are read from ``workdir``), on ``parallel``'s devices."""
  settings = evaluate.EvalSettings.from_config(config.eval)
  if info.get('scales') and workdir is None:
    raise ValueError('scorer_for: a multi-scale run needs its workdir (its scales are there).')
  scales = load_scales(workdir, info, settings, parallel)
  scorer = evaluate.Scorer(model_cfg, settings, parallel=parallel, scales=scales)
  if workdir is not None:
    load_map_tables(scorer, workdir)
  elif settings.fitted_tables:
    raise ValueError('scorer_for: a calibrated map needs the run\'s workdir (its '
                     'calibration, position and level tables are there).')
  return scorer, tiling_lib.Tiling(**info['tiling'])


def load_map_tables(scorer: evaluate.Scorer, workdir: str) -> None:
  """Sets on the scorer what the run's evaluation fitted for its map and saved in
  ``workdir`` (VaeQcError when it is missing): when the map is calibrated, the map
  calibration of the model and of each scale (``vae_qc.calibration``); with
  ``config.eval.map_position``, the run's position calibration (``vae_qc.position``); with
  ``config.eval.map_level``, its level calibration (``vae_qc.level``)."""
  if scorer.settings.calibrated:
    scorer.calibration = calibration_lib.load(workdir)
    for scale in scorer.scales:
      scale.scorer.calibration = calibration_lib.load(os.path.join(workdir, scale.name))
  if scorer.settings.map_position:
    scorer.position = position_lib.load(workdir)  # of the run's map: its scales' mean
  if scorer.settings.uses_level:
    scorer.level = level_lib.load(workdir)  # of the run's smoothed map: its scales' mean


def stack_if_fixed(images, model_cfg, tiling):
  """A list of images as the scorer takes them: one array unless tiled or spatial."""
  if not tiling.size and model_cfg.arch != 'spatial':
    return np.stack(images)
  return images


def read_images(paths, info) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
  """Reads files as the run's evaluation did: fitted to the model size, whole when tiled, and
  fitted to ``image_size`` (0: whole) when the model was trained on patches; then resampled
  by the run's ``image_scale`` (vae_qc.data.texture; 1 for runs saved before it)."""
  if info.get('patch_size'):
    size = info['image_size'] or None
  else:
    size = None if info['tiling']['size'] else (info['image_size'] or
                                                 tuple(info['model']['image_shape'][:2]))
  min_size = max([info.get('patch_size') or info['tiling']['size']]  # every scale's patch
                 + [s['patch_size'] for s in info.get('scales') or ()])
  images, bad = [], []
  for p in progress.track(paths, len(paths), 'reading'):
    try:
      image = texture.resample(folder.read_image(p, info['channels'], size, info['resize_mode']),
                               info.get('image_scale', 1.0))
      evaluate.check_min_size([image], min_size)
      images.append(image)
    except DataError as e:
      bad.append((str(p), str(e)))
  return images, bad


def predict(workdir: str, images_dir: str, out: str, on_bad_image: str = 'skip',
            parallel: parallel_lib.Parallel | None = None) -> dict[str, Any]:
  """Scores every image under ``images_dir``; writes ``out``/scores.csv, maps, report.html.

  Data parallel over ``parallel`` (default: ``vae_qc.parallel.setup`` of the run's config,
  every device), as the run's evaluation was; only process 0 writes. Returns a summary.
  """
  config = read_config(workdir)
  par = parallel or parallel_lib.setup(config)  # before any other JAX computation
  paths = list_images(images_dir)
  config, model_cfg, variables, info = load_run(workdir)
  root = pathlib.Path(images_dir)
  images, bad = read_images(paths, info)
  if bad and on_bad_image == 'error':
    raise DataError(f'{len(bad)} unreadable images:\n' + '\n'.join(f'  {p}: {r}' for p, r in bad))
  good_paths = [p for p in paths if str(p) not in {b for b, _ in bad}]
  if not images:
    raise DataError(f'none of the {len(paths)} images under {images_dir} could be read.')
  scorer, tiling = scorer_for(config, model_cfg, info, par, workdir)
  images = stack_if_fixed(images, model_cfg, tiling)
  map_name = config.eval.get('map', 'nll')
  values, maps = evaluate.score_images(scorer, variables, images, tiling, with_maps=True,
                                       keep_maps=(map_name,))  # the one map written below
  threshold, pixel_threshold = run_threshold(workdir)
  names = list(values)
  ids = [str(p.relative_to(root)) for p in good_paths]
  header = ['id'] + names
  verdicts = None
  if threshold:
    verdicts = (values[threshold['score']] >= threshold['value']).astype(int)
    header += ['verdict']
  summary = {'n_scored': len(ids), 'skipped': [{'path': p, 'reason': r} for p, r in bad],
             'threshold': threshold, 'map': map_name,
             'n_anomalous': int(verdicts.sum()) if verdicts is not None else None}
  if not par.is_writer:
    return summary
  os.makedirs(os.path.join(out, 'maps'), exist_ok=True)
  wd.write_csv(os.path.join(out, 'scores.csv'), header,
               ([i] + [values[n][j] for n in names] + ([int(verdicts[j])] if threshold else [])
                for j, i in enumerate(ids)))
  for i, m in zip(ids, maps[map_name]):
    m = np.asarray(m)
    lo, hi = np.percentile(m, [1, 99.5])
    png = np.clip((m - lo) / max(hi - lo, 1e-12), 0, 1)
    target = os.path.join(out, 'maps', os.path.splitext(i)[0] + '.png')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    Image.fromarray((png * 255).astype(np.uint8)).save(target)
  np.savez_compressed(os.path.join(out, 'maps.npz'),
                      **{i: np.asarray(m, np.float32) for i, m in zip(ids, maps[map_name])})
  wd.write_json(os.path.join(out, 'summary.json'), summary)
  thumbs = report_lib.write_thumbnails(os.path.join(out, 'report_files'), ids, images,
                                       maps[map_name], pixel_threshold)
  page = report_lib.write_predict_report(out, summary, ids, values, verdicts, thumbs, workdir)
  logging.info('Scored %d images (%d skipped) into %s; open %s', len(ids), len(bad), out, page)
  return summary
