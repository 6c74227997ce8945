"""The Python API, for notebooks and scripts (re-exported as ``vae_qc.load_run``, ...).

(``vae_qc.train`` and ``vae_qc.predict`` are modules; the API's names do not shadow them.)

  import vae_qc
  run = vae_qc.load_run('runs/print')             # a trained workdir
  result = run.score('my_photos/')                # a folder, or an array [N, H, W, C] in [0, 1]
  result.scores['map_max'], result.verdicts       # {score: [N]}, [N] (1: defective) or None
  maps = run.score(images, with_maps=True).maps   # {'nll', 'nll_smooth', ...: [N, H, W]}
  results = vae_qc.run_study(config, 'runs/mine') # a whole study from a ConfigDict

``Run.score`` is the path of ``experiments/predict.py`` and of the run's own evaluation
(:func:`vae_qc.evaluate.score_images` with the run's settings and per-image keys): the
numbers are those of the run's ``scores.csv``. Bad input is one :class:`vae_qc.errors.
VaeQcError` (DataError, ConfigError) with a one-line message.
"""
from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import os
import pathlib
from typing import Any

import ml_collections
import numpy as np

from vae_qc import evaluate
from vae_qc import parallel as parallel_lib
from vae_qc import predict as predict_lib
from vae_qc import study
from vae_qc.errors import DataError


@dataclasses.dataclass
class Result:
  """Scores of a set of images.

  Attributes:
    ids: [N] file names relative to the folder, or '0', '1', ... for an array.
    scores: {score name: [N] float}, bigger = more anomalous, in the run's configured order.
    verdicts: [N] int (1: score >= the run's threshold) or None when the run has none.
    maps: {'nll', 'abs_error', 'sq_error', 'z_error', their '_smooth' forms, ...: [N, H, W]
      (a list of [H_i, W_i] for images of several sizes), 'reconstruction': [N, H, W, C]} or None.
      A read-only mapping (``scores.MapForms``): each derived form is computed when first read.
    skipped: [(path, reason)] of files that could not be read.
  """
  ids: list[str]
  scores: dict[str, np.ndarray]
  verdicts: np.ndarray | None
  maps: Mapping[str, Any] | None
  skipped: list[tuple[str, str]]

  def table(self) -> list[dict[str, Any]]:
    """One dict per image: id, every score, verdict (rows of predict's scores.csv)."""
    return [dict(id=i, **{n: float(v[j]) for n, v in self.scores.items()},
                 **({'verdict': int(self.verdicts[j])} if self.verdicts is not None else {}))
            for j, i in enumerate(self.ids)]


class Run:
  """A trained run, ready to score images with its own recipe. Use :func:`load_run`.

  Attributes: workdir, config (ConfigDict), model_cfg, variables (host arrays), info
  (model.json: channels, image size, tiling), threshold (results.json['threshold'] or None),
  pixel_threshold (float or None), scorer (an ``evaluate.Scorer``), tiling.
  """

  def __init__(self, workdir: str, parallel: parallel_lib.Parallel | None = None):
    config = predict_lib.read_config(workdir)
    self.parallel = parallel or parallel_lib.setup(config)
    self.workdir = workdir
    self.config, self.model_cfg, self.variables, self.info = predict_lib.load_run(workdir)
    self.scorer, self.tiling = predict_lib.scorer_for(self.config, self.model_cfg, self.info,
                                                      self.parallel, workdir)
    self.threshold, self.pixel_threshold = predict_lib.run_threshold(workdir)

  @property
  def channels(self) -> int:
    return int(self.info['channels'])

  def __repr__(self) -> str:
    return (f'Run({self.workdir!r}: {self.model_cfg.arch} VAE, images '
            f'{list(self.model_cfg.image_shape)}, scores {list(self.scorer.settings.scores)}, '
            f'threshold {self.threshold and self.threshold["value"]})')

  def read_images(self, images_dir: str) -> tuple[list[str], list[np.ndarray],
                                                  list[tuple[str, str]]]:
    """(ids, images [H, W, C], skipped) of a folder, read as the run's training read them."""
    paths = predict_lib.list_images(images_dir)
    images, bad = predict_lib.read_images(paths, self.info)
    if not images:
      raise DataError(f'none of the {len(paths)} images under {images_dir} could be read.')
    bad_paths = {b for b, _ in bad}
    root = pathlib.Path(images_dir)
    ids = [str(p.relative_to(root)) for p in paths if str(p) not in bad_paths]
    return ids, images, bad

  def _as_images(self, images) -> tuple[list[str], Any, list[tuple[str, str]]]:
    if isinstance(images, (str, os.PathLike)):
      ids, images, bad = self.read_images(str(images))
      return ids, predict_lib.stack_if_fixed(images, self.model_cfg, self.tiling), bad
    many = isinstance(images, (list, tuple))
    arrays = [np.asarray(im) for im in images] if many else [np.asarray(images)]
    if not many and arrays[0].ndim == 3:
      arrays = [arrays[0][None]]  # one image [H, W, C]
    if not arrays or (not many and arrays[0].shape[0] == 0):
      raise DataError('no images to score (an empty array or list).')
    for a in arrays:
      if a.ndim not in (3, 4) or a.shape[-1] != self.channels:
        raise DataError(
            f'images of shape {list(a.shape)}: the run {self.workdir} takes '
            f'{self.channels}-channel images, [N, H, W, {self.channels}] (or a list of '
            f'[H, W, {self.channels}]); convert them, or pass a folder to read them as training '
            'did.')
    convert = lambda a: (a.astype(np.float32) / 255.0 if a.dtype == np.uint8
                         else a.astype(np.float32, copy=False))
    if many:
      out = [convert(a) for a in arrays]
      n = len(out)
      out = predict_lib.stack_if_fixed(out, self.model_cfg, self.tiling)
    else:
      out = convert(arrays[0])
      n = len(out)
      if self.model_cfg.arch == 'spatial' or self.tiling.size:
        out = list(out)
    return [str(i) for i in range(n)], out, []

  def score(self, images, with_maps: bool = False) -> Result:
    """Scores (and maps) of ``images``: a folder (read as training read its images), an
    array [N, H, W, C] or [H, W, C] (float in [0, 1], or uint8), or a list of [H, W, C].
    Arrays are scored as given, as the model sees its images: a run whose study resampled its
    images to their texture's scale (``self.info['image_scale']`` < 1, vae_qc.data.texture)
    takes them resampled so (``vae_qc.data.texture.resample``, or ``data.load`` of the run's
    config); a folder is resampled here."""
    ids, x, bad = self._as_images(images)
    values, maps = evaluate.score_images(self.scorer, self.variables, x, self.tiling,
                                         with_maps=with_maps)
    verdicts = None
    if self.threshold:
      verdicts = (values[self.threshold['score']] >= self.threshold['value']).astype(np.int32)
    return Result(ids, values, verdicts, maps, bad)

  def maps(self, images) -> dict[str, Any]:
    """The per-pixel maps of ``images`` (see :meth:`score`)."""
    return self.score(images, with_maps=True).maps

  def predict(self, images_dir: str, out: str, on_bad_image: str = 'skip') -> dict[str, Any]:
    """``experiments/predict.py``: scores.csv, maps, report.html in ``out``."""
    return predict_lib.predict(self.workdir, images_dir, out, on_bad_image, self.parallel)


def load_run(workdir: str, parallel: parallel_lib.Parallel | None = None) -> Run:
  """The trained run in ``workdir`` (config.json, model.json, checkpoints/).

  ``parallel``: devices to score on (default: every device, as the run's evaluation).
  Raises VaeQcError when ``workdir`` holds no trained run.
  """
  return Run(workdir, parallel)


def run_study(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False,
          parallel: parallel_lib.Parallel | None = None) -> dict[str, Any]:
  """A whole study (data, training, scores, report.html) from a ConfigDict, e.g.
  ``experiments.configs.mnist.get_config()`` with fields changed; resumes like the scripts.
  Returns the results dict (results.json)."""
  return study.train_and_evaluate(config, workdir, allow_config_change, parallel)


def predict(workdir: str, images_dir: str, out: str, on_bad_image: str = 'skip'
            ) -> dict[str, Any]:
  """``experiments/predict.py`` as a function; returns its summary."""
  return predict_lib.predict(workdir, images_dir, out, on_bad_image)


__all__ = ['Result', 'Run', 'load_run', 'predict', 'run_study']
