"""vae_qc.level: the level calibration against a float64 reference written here, its file, and
its configuration errors."""
import dataclasses
import json

import numpy as np
import pytest

from experiments.configs import default as default_config
from vae_qc import evaluate
from vae_qc import level
from vae_qc.errors import ConfigError, VaeQcError


def _maps(rng, n, scale=1.0):
  return [scale * rng.gamma(2.0, 0.01, size=(12, 9 + i % 3)) for i in range(n)]


def test_fit_and_excess_against_a_reference():
  rng = np.random.default_rng(0)
  good = _maps(rng, 20)
  fitted = level.fit(good, low_weight=0.5)
  logs = np.array([np.log(np.median(m)) for m in good])
  d = logs - logs.mean()
  tol = np.max(np.where(d > 0, d, -0.5 * d))
  assert fitted.mean == pytest.approx(logs.mean(), abs=1e-12)
  assert fitted.tolerance == pytest.approx(tol, abs=1e-12)
  assert (fitted.low_weight, fitted.n) == (0.5, 20)
  # every good image it was fitted on lies within its range: no excess
  np.testing.assert_array_equal(level.excess(fitted, good), np.zeros(20))
  # four times the residual everywhere: log 4 above the mean, less the tolerance; a quarter of
  # it: log 4 below, at half weight
  base = np.exp(logs.mean()) * np.ones((10, 10))
  got = level.excess(fitted, [4 * base, base / 4, base])
  np.testing.assert_allclose(got, [np.log(4) - tol, max(0.5 * np.log(4) - tol, 0), 0],
                             atol=1e-9)
  assert got[0] > 0


def test_a_map_of_zeros_has_a_finite_large_excess():
  fitted = level.fit(_maps(np.random.default_rng(1), 5), low_weight=0.5)
  got = level.excess(fitted, [np.zeros((8, 8))])
  assert np.isfinite(got[0]) and got[0] > 10


def test_saved_and_loaded_alike_and_a_missing_file_says_how_to_fit_it(tmp_path):
  fitted = level.fit(_maps(np.random.default_rng(2), 7), low_weight=0.25)
  level.save(str(tmp_path), fitted)
  assert level.load(str(tmp_path)) == fitted
  with pytest.raises(VaeQcError, match='map_level.json is missing.*allow_config_change'):
    level.load(str(tmp_path / 'nowhere'))
  (tmp_path / level.FILE).write_text('{"mean": 1}')
  with pytest.raises(VaeQcError, match='is not a level calibration'):
    level.load(str(tmp_path))
  with pytest.raises(VaeQcError, match='at least one good map'):
    level.fit([], 0.5)


def test_the_level_is_fitted_only_for_a_score_it_adds_to():
  """map_level adds to the '*_logratio' map scores: without one it needs no table (a print
  config scored by the tiles' −ELBO on the 'nll' map, as the paper's)."""
  cfg = default_config.get_config().eval
  cfg.map_level = True
  cfg.map = 'nll'
  cfg.scores = ('neg_elbo',)
  settings = evaluate.EvalSettings.from_config(cfg)
  assert not settings.uses_level and not settings.fitted_tables
  cfg.map = 'sq_error_logratio'
  cfg.scores = ('neg_elbo', 'map_topk_logratio')
  settings = evaluate.EvalSettings.from_config(cfg)
  assert settings.uses_level and settings.fitted_tables
  cfg.map_level = False
  assert not evaluate.EvalSettings.from_config(cfg).fitted_tables
  assert settings.map_level_images == 'training'  # the default
  cfg.map_level_images = 'test'
  with pytest.raises(ConfigError, match="map_level_images must be one of training, held_out, "
                     "got 'test'"):
    evaluate.EvalSettings.from_config(cfg)


def test_global_defects_change_every_image_as_a_whole_and_deterministically():
  from vae_qc import global_defects  # pylint: disable=g-import-not-at-top
  from vae_qc.errors import DataError  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.random((3, 10, 10, 1)).astype(np.float32)
  out = global_defects.make(images, seed=1)
  assert list(out) == list(global_defects.VARIANTS)
  for name, x in out.items():
    assert x.shape == images.shape and x.dtype == np.float32, name
    assert 0 <= x.min() and x.max() <= 1, name
    assert not np.array_equal(x, images), name
  np.testing.assert_array_equal(out['blank'], 0.5)
  np.testing.assert_allclose(out['negative'], 1 - images)
  np.testing.assert_array_equal(out['turned'][0, :, :, 0], np.rot90(images[0, :, :, 0]))
  np.testing.assert_allclose(out['low_contrast'].mean((1, 2, 3)), images.mean((1, 2, 3)),
                             atol=1e-6)  # halved about the mean, which stays
  again = global_defects.make(images, seed=1)
  for name in out:
    np.testing.assert_array_equal(out[name], again[name])
  assert not np.array_equal(global_defects.make(images, seed=2)['noise'], out['noise'])
  with pytest.raises(DataError, match=r'need images \[N, H, W, C\]'):
    global_defects.make(images[0])


def test_the_source_is_kept_and_checked_and_older_files_read_as_training(tmp_path):
  maps = np.random.default_rng(0).random((5, 8, 8)) + 0.1
  fitted = level.fit(maps, 0.5, 'held_out')
  level.save(str(tmp_path), fitted)
  assert level.load(str(tmp_path)) == fitted and fitted.source == 'held_out'
  assert level.fit(maps, 0.5).source == 'training'
  with pytest.raises(ConfigError, match="map_level_images must be one of training, held_out"):
    level.fit(maps, 0.5, 'test')
  saved = json.load(open(tmp_path / level.FILE))
  del saved['source']  # a run fitted before the level had a source
  json.dump(saved, open(tmp_path / level.FILE, 'w'))
  assert level.load(str(tmp_path)) == dataclasses.replace(fitted, source='training')
