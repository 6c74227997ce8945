"""The print recipe end to end on tiny striped surfaces (a folder in MVTec layout): random
training patches, a global (tiled) and a spatial (whole-image) patch model and a global one
with a further scale, map scores; predict == evaluate for each, and the maps put defect
pixels above good ones."""
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from tests.conftest import output_excerpt
from tests.conftest import xla_env
from tests.integration.predict_check import assert_predict_equals_evaluate
from vae_qc import api
from vae_qc import budget
from vae_qc import config as config_lib
from vae_qc import data as data_lib
from vae_qc import evaluate
from vae_qc import fusion
from vae_qc import level
from vae_qc import metrics
from vae_qc import misses
from vae_qc import position
from vae_qc import predict
from vae_qc import scores as scores_lib
from vae_qc import study
from vae_qc.errors import ConfigError, DataError, TrainingError

pytestmark = pytest.mark.slow  # three print studies and predict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 48


def _stripes(rng, size=SIZE):
  """A tiny layer-line surface: stripes of random pitch, tilt and phase, and noise."""
  y, x = np.mgrid[:size, :size]
  pitch, tilt, phase = rng.uniform(5, 8), rng.uniform(-0.1, 0.1), rng.uniform(0, 2 * np.pi)
  image = 0.5 + 0.3 * np.sin(2 * np.pi * (y + tilt * x) / pitch + phase)
  return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)


def _write_surfaces(root):
  """MVTec layout: 60 good training surfaces; 6 good and 2 x 2 defect test surfaces (a dark
  and a bright disc), with exact masks."""
  rng = np.random.default_rng(0)
  save = lambda path, a: (os.makedirs(os.path.dirname(path), exist_ok=True),
                          Image.fromarray(np.round(a * 255).astype(np.uint8)).save(path))
  for i in range(60):
    save(os.path.join(root, 'train', 'good', f'{i:03d}.png'), _stripes(rng))
  for i in range(6):
    save(os.path.join(root, 'test', 'good', f'{i:03d}.png'), _stripes(rng))
  y, x = np.mgrid[:SIZE, :SIZE]
  for kind, value in (('dark_disc', 0.05), ('bright_disc', 0.95)):
    for i in range(2):
      image = _stripes(rng)
      cy, cx, r = rng.uniform(12, SIZE - 12), rng.uniform(12, SIZE - 12), rng.uniform(4, 6)
      mask = (y - cy) ** 2 + (x - cx) ** 2 < r ** 2
      save(os.path.join(root, 'test', kind, f'{i:03d}.png'), np.where(mask, value, image))
      save(os.path.join(root, 'ground_truth', kind, f'{i:03d}_mask.png'), mask.astype(float))


def _config(root, **overrides):
  config = config_lib.load_file(os.path.join(ROOT, 'experiments', 'configs', 'print_cpu.py'))
  common = {
      'data.root': root, 'data.patch_size': 16, 'data.tile_stride': 8, 'data.scales': (),
      'model.blocks': (8, 8), 'model.fc': 32, 'model.latent': 4,
      'train.steps': 0, 'train.epochs': 30, 'train.batch_size': 16, 'train.log_every_steps': 50,
      'train.time_budget_s': 0.0,
      'eval.elbo_samples': 2, 'eval.map_samples': 2, 'eval.batch_size': 64,
      'eval.map_topk': 20, 'eval.map_sigma': 1.0, 'eval.map_post_sigma': 2.0,
      'eval.num_plot_images': 1,
      'threshold.val_fraction': 0.2}
  return config_lib.apply_overrides(config, {**common, **overrides})


@pytest.fixture(scope='module')
def surfaces(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('surfaces'))
  _write_surfaces(root)
  return root


@pytest.fixture(scope='module', params=['global', 'spatial', 'scales'])
def run(request, surfaces, tmp_path_factory):
  """A trained run: a global (tiled) patch model, a spatial one, or a global one with a
  further scale of 8-px patches (vae_qc.scales). The last has a time budget (vae_qc.budget)
  that halves its 180 steps once, to the 90 (30 epochs) of the others: each model's step is
  'measured' at 0.5 s, so 180 steps would take 2 × 91 s and 90 steps 2 × 46 s of its 100 s.
  Then the budget's clock is set 99 s on: the first check of the main model's speed (step 6
  of 90) finds the budget spent and shortens the run to its floor, 180 / 8 = 22 steps."""
  overrides = ({'model.arch': 'global', 'data.scales': ((8, 4),), 'train.epochs': 0,
                'train.steps': 180, 'train.time_budget_s': 100.0, 'train.log_every_steps': 2,
                'eval.map_samples': 4, 'eval.elbo_samples': 4}
               if request.param == 'scales' else {'model.arch': request.param})
  config = _config(surfaces, **overrides)
  workdir = str(tmp_path_factory.mktemp(f'patch_{request.param}') / 'run')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(budget, 'measure', lambda *a: {'compile_and_warmup_s': 1.0,
                                                 'seconds_per_step': 0.5})
    patch.setattr(budget, 'eval_seconds', lambda *a: 0.0)  # budget_test checks the estimate
    patch.setattr(budget.Deadline, 'clock', staticmethod(lambda: time.time() + 99.0))
    return workdir, study.train_and_evaluate(config, workdir), config


def test_a_time_budget_trains_every_model_the_planned_steps(run):
  workdir, results, config = run
  if not config.data.scales:
    pytest.skip('the multi-scale run, with a time budget')
  plan = results['train']['plan']
  assert (plan['configured_steps'], plan['schedule'][0]) == (180, [0, 90])  # as planned
  # one antithetic pair came first (the recipe draws pairs; it saves nothing here, where
  # evaluation is 'measured' at 0 s)
  assert plan['eval'] == {'map_samples': 2, 'elbo_samples': 2}
  assert set(plan['timings']) == {'main', 'scale_p8'}
  assert plan['estimated_s'] == 92.0 and plan['estimated_configured_s'] == 182.0
  assert plan['probe_s'] < 8.0  # the rest of the budget was left for training
  # evaluation maps 40 training images (calibration), 10 test and 12 held-out images of
  # 48×48: 25 tiles each for the main model (16 px every 8), 121 for the scale (8 every 4),
  # in one pass of K = 4 each (the map pass gives the tiles' −ELBO)
  assert [(t['eval_inputs'], t['eval_samples']) for t in plan['timings'].values()] == [
      (62 * 25, [4]), (62 * 121, [4])]
  assert json.load(open(os.path.join(workdir, budget.FILE))) == plan
  # the checks: at step 6 the budget was spent (the clock 99 s on), so every model trains
  # 22 steps, and the main model's cosine ends at 22 from step 6 on; later checks are past
  # the new end
  assert [(c['at_step'], c['steps_before'], c['steps']) for c in plan['checks']] == [
      (6, 90, 22)]
  assert plan['schedule'] == [[0, 90], [6, 22]] and not plan['fits']
  assert results['train']['steps'] == 22
  for d in (workdir, os.path.join(workdir, 'scale_p8')):
    steps = [json.loads(line)['step']
             for line in open(os.path.join(d, 'metrics.jsonl')).read().splitlines()]
    assert steps == list(range(2, 23, 2)), d  # a line every 2 steps, the pause's too
  # the run's config is the one given (its resumption plans from the file, below); the run
  # was evaluated as planned, and predict reads it so (predict == evaluate, below)
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['train']['steps'] == 180 and saved['eval']['map_samples'] == 4
  read = predict.read_config(workdir).eval
  assert (read.map_samples, read.map_antithetic) == (2, True)
  assert results['eval']['map_samples'] == results['eval']['elbo_samples'] == 2
  assert results['eval']['map_antithetic']


def test_results_have_map_scores_and_pixel_metrics(run):
  workdir, results, config = run
  assert set(results['scores']) == set(config.eval.scores)
  assert results['pixel']['map'] == config.eval.map == 'cal_error_logratio'
  assert not os.path.exists(os.path.join(workdir, 'scores_cache'))  # deleted when finished
  model = json.load(open(os.path.join(workdir, 'model.json')))
  assert model['patch_size'] == 16 and model['model']['image_shape'] == [16, 16, 1]
  assert model['tiling']['size'] == (16 if config.model.arch == 'global' else 0)
  assert results['train']['images'] == 48  # whole images: patches are drawn every step


def test_defect_pixels_score_above_good_ones(run):
  """Even a seconds-long run ranks defect pixels above good pixels on average."""
  workdir, _, config = run
  data_root = json.load(open(os.path.join(workdir, 'results.json')))['data']['root']
  out = os.path.join(workdir, 'pred')
  predict.predict(workdir, os.path.join(data_root, 'test'), out)
  maps = np.load(os.path.join(out, 'maps.npz'))
  defect, good = [], []
  for name in maps.files:
    kind = name.split('/')[0]
    if kind == 'good':
      continue
    stem = os.path.splitext(name.split('/')[1])[0]
    mask = np.asarray(Image.open(os.path.join(data_root, 'ground_truth', kind,
                                              f'{stem}_mask.png'))) > 0
    defect.append(maps[name][mask])
    good.append(maps[name][~mask])
  defect, good = np.concatenate(defect), np.concatenate(good)
  assert defect.mean() > good.mean(), config.model.arch
  labels = np.r_[np.ones(len(defect)), np.zeros(len(good))]
  assert metrics.auroc(np.r_[defect, good], labels) > 0.6, config.model.arch


def test_predict_equals_evaluate_on_the_patch_model(run, tmp_path):
  workdir, _, config = run
  summary = assert_predict_equals_evaluate(workdir, str(tmp_path), config.eval.scores)
  assert summary['n_scored'] == 6 + 2 * 2


def test_each_model_of_the_run_has_its_map_calibration(run):
  """The recipe's map is calibrated: one calibration per model (each scale its own), fitted
  after training and saved beside its checkpoints for predict; and position-calibrated: the
  run's table (of its scales' mean map) and one per scale (of its own map)."""
  workdir, _, config = run
  dirs = [workdir] + [os.path.join(workdir, f'scale_p{p}') for p, _ in config.data.scales]
  for d in dirs:
    saved = json.load(open(os.path.join(d, 'map_calibration.json')))
    assert len(saved['expected']) == 16 and min(saved['expected']) > 0
    assert saved['edges'] == sorted(saved['edges'])
    table = position.load(d)
    assert np.isfinite(table.mean[0, 0]) and table.sd[table.inner] > 0
    fitted = level.load(d)
    assert np.isfinite(fitted.mean) and fitted.tolerance > 0
    assert (fitted.source, fitted.n) == ('training', 40)  # the map calibration's images
  assert config.eval.map_position and config.eval.map_level


def test_the_level_fitted_on_held_out_images(run, tmp_path):
  """config.eval.map_level_images='held_out': the level of the good images that the threshold
  holds out of training (a copy of the finished run scored again; it trains nothing): their
  levels lie within it (no excess), it is saved as theirs and predict reads it. Without held-out
  images (no threshold) the option is a clear error before anything runs."""
  workdir, _, config = run
  if config.model.arch != 'global' or config.data.scales:
    pytest.skip('one run is enough: the same code fits every run level')
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  held = config_lib.apply_overrides(config, {'eval.map_level_images': 'held_out'})
  results = study.train_and_evaluate(held, copy, allow_config_change=True)
  fitted = level.load(copy)
  assert (fitted.source, fitted.n) == ('held_out', results['threshold']['validation']['n'])
  assert fitted != level.load(workdir)
  loaded = api.load_run(copy)
  _, held_out = study.split_validation(data_lib.load(config.data), config.threshold,
                                       config.data.seed)
  smooth = loaded.score(held_out.images, with_maps=True).maps[
      scores_lib.base_map(loaded.scorer.settings) + '_smooth']
  assert np.all(level.excess(loaded.scorer.level, smooth) < 1e-9)
  assert_predict_equals_evaluate(copy, str(tmp_path / 'pred'), held.eval.scores)
  none = config_lib.apply_overrides(held, {'threshold.method': 'none'})
  with pytest.raises(ConfigError, match="holds none out: set config.threshold.method"):
    study.train_and_evaluate(none, copy, allow_config_change=True)
  # The level the only table (an uncalibrated map, no position table): fitted on the held-out
  # images without the training images' maps, as a fit on training images is with them.
  only = config_lib.apply_overrides(held, {'eval.map': 'sq_error_logratio',
                                           'eval.map_position': False})
  study.train_and_evaluate(only, copy, allow_config_change=True)
  alone = level.load(copy)
  again = str(tmp_path / 'again')
  shutil.copytree(workdir, again)
  study.train_and_evaluate(config_lib.apply_overrides(only, {'eval.map_level_images': 'training'}),
                           again, allow_config_change=True)
  assert alone.source == 'held_out' and level.load(again).source == 'training'
  assert alone.n == fitted.n and alone != fitted  # the uncalibrated map's level, not the recipe's


def test_images_wrong_everywhere_score_above_every_good_one(run):
  """The level excess (vae_qc.level): uniform noise and the stripes turned by 90° (the
  training surfaces' lines are near horizontal) have no region that stands out from their own
  median; each image score is its map's top-k mean plus its level's excess, which is > 0 for
  both, and noise scores above every good test image."""
  workdir, _, config = run
  loaded = api.load_run(workdir)
  dataset = data_lib.load(config.data)
  good = dataset.test_images[dataset.test_labels == 0]
  wrong = np.stack([np.random.default_rng(3).random(good[0].shape).astype(np.float32),
                    np.rot90(good[0]).copy()])
  name = 'map_topk_logratio'
  good_scores = loaded.score(good).scores[name]
  result = loaded.score(wrong, with_maps=True)
  assert result.scores[name][0] > good_scores.max(), (result.scores[name], good_scores)
  smooth = result.maps[scores_lib.base_map(loaded.scorer.settings) + '_smooth']
  extra = level.excess(loaded.scorer.level, smooth)
  topk = [scores_lib.top_k_mean(m, config.eval.map_topk) for m in result.maps[config.eval.map]]
  np.testing.assert_allclose(result.scores[name], np.add(topk, extra), rtol=1e-6)
  assert np.all(extra > 0)


def test_the_uncalibrated_map_needs_no_calibration(run, tmp_path):
  """A run scored with the previous map ('sq_error_logratio', as runs made before the
  calibration are) and without the position calibration neither needs nor reads either: the
  finished run, its calibrations and position tables deleted, scored again so (it trains
  nothing); predict gives its scores."""
  workdir, _, config = run
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  for d in [copy] + [os.path.join(copy, f'scale_p{p}') for p, _ in config.data.scales]:
    os.remove(os.path.join(d, 'map_calibration.json'))
    os.remove(os.path.join(d, position.FILE))
  plain = config_lib.apply_overrides(config, {'eval.map': 'sq_error_logratio',
                                              'eval.map_position': False})
  results = study.train_and_evaluate(plain, copy, allow_config_change=True)
  assert results['pixel']['map'] == 'sq_error_logratio'
  assert not os.path.exists(os.path.join(copy, 'map_calibration.json'))
  assert not os.path.exists(os.path.join(copy, position.FILE))
  assert_predict_equals_evaluate(copy, str(tmp_path / 'pred'), plain.eval.scores)


def test_predict_scores_photos_of_other_sizes_and_refuses_small_ones(run, tmp_path):
  workdir, _, config = run
  (tmp_path / 'in').mkdir()
  for name, size in (('big.png', 100), ('odd.png', 37)):
    image = _stripes(np.random.default_rng(1), size)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / 'in' / name)
  summary = predict.predict(workdir, str(tmp_path / 'in'), str(tmp_path / 'out'))
  maps = np.load(tmp_path / 'out' / 'maps.npz')
  assert summary['n_scored'] == 2 and maps['big.png'].shape == (100, 100)
  assert maps['odd.png'].shape == (37, 37)
  Image.fromarray(np.zeros((12, 40), np.uint8)).save(tmp_path / 'in' / 'small.png')
  summary = predict.predict(workdir, str(tmp_path / 'in'), str(tmp_path / 'out2'))
  assert summary['n_scored'] == 2 and summary['skipped'][0]['path'].endswith('small.png')
  assert 'smaller than the 16x16 patches' in summary['skipped'][0]['reason']
  with pytest.raises(DataError, match='smaller than the 16x16 patches'):
    predict.predict(workdir, str(tmp_path / 'in'), str(tmp_path / 'out3'), on_bad_image='error')
  del config


def test_global_defects_script_reports_every_change(run, tmp_path):
  """experiments/global_defects.py on the run's good test images: one row per change, each
  AUROC in [0, 1], the JSON table written; uniform noise is flagged (the level excess)."""
  workdir, _, config = run
  if config.model.arch != 'global' or config.data.scales:
    pytest.skip('one run is enough: the script scores through load_run')
  out = tmp_path / 'global.json'
  p = subprocess.run([sys.executable, 'experiments/global_defects.py', f'--workdir={workdir}',
                      f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, output_excerpt(p.stdout + p.stderr)
  table = json.loads(out.read_text())
  assert table['score'] == 'map_topk_logratio' and table['threshold'] is not None
  assert set(table['variants']) == {'blur', 'noise', 'low_contrast', 'high_contrast',
                                    'negative', 'blank', 'uniform_noise', 'turned'}
  for name, row in table['variants'].items():
    assert 0 <= row['auroc'] <= 1 and 0 <= row['flagged'] <= 1, name
    assert f'| {name} (' in p.stdout
  assert table['variants']['uniform_noise']['auroc'] == 1.0
  p = subprocess.run([sys.executable, 'experiments/global_defects.py', f'--workdir={tmp_path}'],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2 and 'is not a trained run' in p.stderr, output_excerpt(p.stderr)


def test_a_multi_scale_runs_maps_are_the_mean_of_its_models_maps(run):
  """config.data.scales: the further model is a run of its own in workdir/scale_p8; each map
  the scores and metrics read is the mean of the two models' maps (each formed from its own
  scale's map), the map scores summarise that mean, the tile scores are the main model's."""
  workdir, results, config = run
  if not config.data.scales:
    pytest.skip('the multi-scale run')
  images = data_lib.load(config.data).test_images[:4]
  fused = api.load_run(workdir)
  scale = api.load_run(os.path.join(workdir, 'scale_p8'))  # a run of its own
  assert [s.name for s in fused.scorer.scales] == ['scale_p8'] and not scale.scorer.scales
  assert scale.model_cfg.image_shape == (8, 8, 1) and scale.tiling.stride == 4
  assert json.load(open(os.path.join(workdir, 'model.json')))['scales'] == [
      {'dir': 'scale_p8', 'patch_size': 8}]
  assert config.eval.map_position and scale.scorer.position is not None  # its own, as a run
  # the mean is of the models' maps before the run's position calibration
  assert scale.scorer.level is not None  # its own level, as a run
  plain = dataclasses.replace(fused.scorer.settings, map_position=False, map_level=False)
  main = evaluate.Scorer(fused.model_cfg, plain)  # the main model alone
  main.calibration = fused.scorer.calibration  # ... with its own calibration
  np.testing.assert_array_equal(scale.scorer.calibration.expected,
                                fused.scorer.scales[0].scorer.calibration.expected)
  alone = evaluate.Scorer(scale.model_cfg, plain)  # and the scale's model alone
  alone.calibration = scale.scorer.calibration
  main_values, main_maps = evaluate.score_images(main, fused.variables, images, fused.tiling,
                                                 with_maps=True)
  _, scale_maps = evaluate.score_images(alone, scale.variables, images, scale.tiling,
                                        with_maps=True)
  values, maps = evaluate.score_images(fused.scorer, fused.variables, images, fused.tiling,
                                       with_maps=True)
  for name in ('nll_smooth', 'sq_error'):
    np.testing.assert_allclose(maps[name], (main_maps[name] + scale_maps[name]) / 2,
                               rtol=1e-6, atol=1e-6, err_msg=name)
  mean = (main_maps[config.eval.map] + scale_maps[config.eval.map]) / 2  # then calibrated
  np.testing.assert_allclose(maps[config.eval.map],  # by the run's position (vae_qc.position)
                             [position.apply(fused.scorer.position, m) for m in mean],
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(maps[config.eval.map], main_maps[config.eval.map])
  np.testing.assert_array_equal(maps['reconstruction'], main_maps['reconstruction'])
  smooth = maps[scores_lib.base_map(fused.scorer.settings) + '_smooth']  # the models' mean
  np.testing.assert_allclose(values['map_topk_logratio'],
                             np.add([scores_lib.top_k_mean(m, config.eval.map_topk)
                                     for m in maps[config.eval.map]],
                                    level.excess(fused.scorer.level, smooth)), rtol=1e-9)
  np.testing.assert_array_equal(values['neg_elbo'], main_values['neg_elbo'])
  assert results['train']['images'] == 48


def test_a_multi_scale_run_run_again_resumes_both_models(run, tmp_path):
  """The same command on a finished multi-scale run trains nothing (both models resume from
  their last checkpoints) and gives the same results; a changed scale is refused. The time
  budget's plan is read back, not made again (measured for real, the tiny models' steps
  would fit all 180 steps in the budget, and both would train on)."""
  workdir, results, config = run
  if not config.data.scales:
    pytest.skip('the multi-scale run')
  lines = [os.path.getsize(os.path.join(d, 'metrics.jsonl'))
           for d in (workdir, os.path.join(workdir, 'scale_p8'))]
  again = study.train_and_evaluate(config, workdir)
  assert [os.path.getsize(os.path.join(d, 'metrics.jsonl'))
          for d in (workdir, os.path.join(workdir, 'scale_p8'))] == lines  # no step trained
  assert again['scores'] == results['scores'] and again['pixel'] == results['pixel']
  assert again['threshold'] == results['threshold']
  changed = config_lib.apply_overrides(config, {'data.scales': ((8, 2),)})
  with pytest.raises(TrainingError, match=r'scale_p8 holds a run with a different config '
                                          r'\(data.tile_stride: 4 -> 2\)'):
    study.train_and_evaluate(changed, workdir)


def test_a_multi_scale_run_scores_alike_on_eight_devices(run, tmp_path):
  """predict.py on 8 fake CPU devices (every scale's batches sharded, as evaluation's): the
  run's scores within float32 summation-order noise, the same verdicts."""
  workdir, results, config = run
  if not config.data.scales:
    pytest.skip('the multi-scale run')
  env = dict(xla_env(8),
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = tmp_path / 'eight'
  done = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'predict.py'),
                         f'--workdir={workdir}', f'--images={results["data"]["root"]}/test',
                         f'--out={out}'], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, output_excerpt(done.stderr)
  assert 'Data parallel over 8 cpu device(s)' in done.stderr
  eight = {r['id']: r for r in csv.DictReader(open(out / 'scores.csv'))}
  one = {r['id']: r for r in csv.DictReader(open(os.path.join(workdir, 'scores.csv')))}
  assert set(eight) == set(one)
  for i in one:
    for name in config.eval.scores:
      a, b = float(eight[i][name]), float(one[i][name])
      assert abs(a - b) <= 1e-5 * (1 + abs(b)), (i, name, a, b)
    assert eight[i]['verdict'] == one[i]['verdict']


def test_predict_benchmark_times_every_scale(run):
  """experiments/benchmark_predict.py on the multi-scale run: it scores through the scales
  (their windows, --scale_tile_stride applied) and prints one JSON line."""
  workdir, _, config = run
  if not config.data.scales:
    pytest.skip('the multi-scale run')
  cmd = [sys.executable, os.path.join(ROOT, 'experiments', 'benchmark_predict.py'),
         f'--workdir={workdir}', '--size=64', '--images=1', '--scale_tile_stride=8']
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
  assert done.returncode == 0, output_excerpt(done.stderr)
  line = json.loads([x for x in done.stdout.splitlines() if x.startswith('{')][-1])
  assert line['size'] == 64 and line['images'] == 1 and line['images_per_s'] > 0
  assert line['images_per_s_one_at_a_time'] > 0
  assert line['model_gflop_per_image'] > 0 and line['model_gflop_per_s'] > 0
  assert line['matmul_peak_gflops'] > 0
  assert line['tiling']['size'] == 16 and line['tiling']['stride'] == 8
  assert [(t['size'], t['stride']) for t in line['scales']] == [(8, 8)]


@pytest.mark.parametrize('scales, message', [
    (((10, 5),), r'config.data.patch_size=10 does not fit the model: it must be divisible by '
                 r'2\*\*len\(config.model.blocks\) = 4 .*; try 8'),
    (((64, 8),), r'config.data.patch_size=64 is larger than the training images \(48x48\)'),
    (((16, 8),), r'config.data.scales: patch size 16 is there twice'),
])
def test_a_scale_that_cannot_be_trained_is_refused_before_training(surfaces, tmp_path, scales,
                                                                   message):
  config = _config(surfaces, **{'data.scales': scales})
  with pytest.raises(ConfigError, match=message):
    study.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')  # nothing trained


def test_augment_zoom_and_max_period_are_checked_before_training(surfaces, tmp_path):
  config = _config(surfaces, **{'data.patch_size': 0, 'data.augment': 'flips'})
  with pytest.raises(ConfigError, match=r"config.data.augment='flips' mirrors the random "
                                        r'training patches; set config.data.patch_size > 0'):
    study.train_and_evaluate(config, str(tmp_path / 'run'))
  config = _config(surfaces, **{'data.augment': 'turned'})
  with pytest.raises(ConfigError, match='config.data.augment must be one of none, hflip'):
    study.train_and_evaluate(config, str(tmp_path / 'run2'))
  assert not os.path.exists(tmp_path / 'run2' / 'checkpoints')  # nothing trained
  config = _config(surfaces, **{'data.patch_size': 0, 'data.zoom': 1.25})
  with pytest.raises(ConfigError, match=r'config.data.zoom=1.25 zooms the random training '
                                        r'patches; set config.data.patch_size > 0'):
    study.train_and_evaluate(config, str(tmp_path / 'run3'))
  config = _config(surfaces, **{'data.max_period': -4.0})  # before the data are read
  with pytest.raises(ConfigError, match='config.data.max_period must be a number of pixels'):
    study.train_and_evaluate(config, str(tmp_path / 'period'))
  config = _config(surfaces, **{'data.zoom': 0.5})
  with pytest.raises(ConfigError, match='config.data.zoom must be a number >= 1'):
    study.train_and_evaluate(config, str(tmp_path / 'run4'))
  assert not os.path.exists(tmp_path / 'run4' / 'checkpoints')


def test_misses_picture_is_the_lowest_scored_image_of_the_kind(run, tmp_path):
  """vae_qc.misses (experiments/print_misses.py): the row's image is the lowest-scored of its
  kind in scores.csv, scored again to the same value; an unknown kind names the run's kinds."""
  workdir, _, config = run
  if config.model.arch != 'global' or config.data.scales:
    pytest.skip('one model is enough: the script only reads the run and calls load_run')
  rows = list(csv.DictReader(open(os.path.join(workdir, 'scores.csv'))))
  dark = [r for r in rows if r['group'] == 'dark_disc']
  expected = min(dark, key=lambda r: float(r['map_topk_logratio']))['id']
  out = str(tmp_path / 'misses.png')
  summary = misses.misses([(workdir, 'dark_disc')], out, 'map_topk_logratio')
  assert [s['id'] for s in summary] == [expected] and summary[0]['mask_pixels'] > 0
  assert Image.open(out).size[0] > 100
  good = [r for r in rows if r['label'] == '0']  # 'good': the worst false alarm
  assert misses.lowest(workdir, 'good', 'map_topk_logratio')[0] == max(
      good, key=lambda r: float(r['map_topk_logratio']))['id']
  with pytest.raises(DataError, match='its kinds: good, bright_disc, dark_disc'):
    misses.lowest(workdir, 'warping', 'map_topk_logratio')
  with pytest.raises(DataError, match='choose --score among'):
    misses.lowest(workdir, 'dark_disc', 'latent_nll')


def test_fusion_of_a_run_with_itself_gives_the_runs_own_figures(run):
  """vae_qc.fusion (experiments/fuse_maps.py): each run's figures are those of its
  results.json (the same map, scored by load_run), and the mean of identical maps is the map."""
  workdir, results, config = run
  if config.model.arch != 'global' or config.data.scales:
    pytest.skip('one model is enough: fusion reads the runs through load_run')
  out = fusion.evaluate_fusion([workdir, workdir])
  assert out['map'] == config.eval.map
  for figures in (out['runs'][workdir], out['fused']):
    assert figures['image_auroc'] == pytest.approx(results['scores']['map_topk_logratio']['auroc'])
    assert figures['pixel_auroc'] == pytest.approx(results['pixel']['auroc'])
    assert figures['aupro'] == pytest.approx(results['pixel']['aupro'])
    assert set(figures['per_defect']) == {'bright_disc', 'dark_disc'}
    for kind, row in figures['per_defect'].items():
      assert row['image_auroc'] == pytest.approx(
          results['per_defect'][kind]['image']['map_topk_logratio']['auroc'])
      assert row['pixel_auroc'] == pytest.approx(results['per_defect'][kind]['pixel']['auroc'])
      assert row['pixel_aupro'] == pytest.approx(results['per_defect'][kind]['pixel']['aupro'])


def test_images_scored_in_concurrent_chunks_score_as_in_one(run, monkeypatch):
  """evaluate.score_images with maps scores a tiled model's images in chunks, in threads: every
  score and map is that of one pass over all the images, bit for bit, in their order; arrays
  stay arrays and images of several sizes give lists. A spatial model is scored in one pass.
  Keeping only some maps (``keep_maps``, as a study does) gives those maps alike."""
  workdir, _, config = run
  loaded = api.load_run(workdir)
  images = data_lib.load(config.data).test_images[:5]
  mixed = [images[0], images[1][:40, :44], images[2]]

  def score(x):
    values, maps = evaluate.score_images(loaded.scorer, loaded.variables, x, loaded.tiling,
                                         with_maps=True)
    return values, {name: maps[name] for name in (config.eval.map, 'sq_error', 'reconstruction')}

  whole = [score(images), score(mixed)]
  monkeypatch.setattr(evaluate, 'CHUNK_PIXELS', 2 * SIZE * SIZE)  # about two images a chunk
  assert evaluate._chunks(images) == [slice(0, 2), slice(2, 4), slice(4, 5)]
  assert evaluate._chunks(mixed) == [slice(0, 3)]
  monkeypatch.setattr(evaluate, 'CHUNK_PIXELS', SIZE * SIZE)
  assert evaluate._chunks(mixed) == [slice(0, 1), slice(1, 3)]
  calls = []
  real = evaluate._score_chunk
  monkeypatch.setattr(evaluate, '_score_chunk', lambda *a: calls.append(len(a[2])) or real(*a))
  for x, (values, maps) in zip([images, mixed], whole):
    got_values, got_maps = score(x)
    assert list(got_values) == list(values)
    for name in values:
      np.testing.assert_array_equal(got_values[name], values[name], err_msg=name)
    for name, m in maps.items():
      assert isinstance(got_maps[name], type(m)) and len(got_maps[name]) == len(x)
      for a, b in zip(got_maps[name], m):
        np.testing.assert_array_equal(a, b, err_msg=name)
  chunked = config.model.arch != 'spatial'
  assert calls == ([1, 1, 1, 1, 1, 1, 2] if chunked else [5, 3])
  assert isinstance(whole[0][1]['sq_error'], np.ndarray) and isinstance(whole[1][1]['sq_error'],
                                                                         list)
  keep = (config.eval.map, 'reconstruction')  # what a study keeps of its test images' maps
  for x, (values, maps) in zip([images, mixed], whole):
    got_values, got_maps = evaluate.score_images(loaded.scorer, loaded.variables, x,
                                                 loaded.tiling, with_maps=True, keep_maps=keep)
    assert sorted(got_maps) == sorted(keep)
    for name in values:
      np.testing.assert_array_equal(got_values[name], values[name], err_msg=name)
    for name in keep:
      assert isinstance(got_maps[name], type(maps[name]))
      for a, b in zip(got_maps[name], maps[name]):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_coarse_texture_is_resampled_to_the_recipes_scale(surfaces, tmp_path):
  """The tiny surfaces photographed twice as close (every file enlarged twice, pitch 10-16
  px): with config.data.max_period the study resamples every image and mask by the factor
  that brings the texture period down to it, records it for predict, and predict reads a
  photo at its own size exactly as the study read its test images."""
  root = str(tmp_path / 'near')
  for dirpath, _, files in os.walk(surfaces):
    for name in files:
      src = os.path.join(dirpath, name)
      dst = os.path.join(root, os.path.relpath(src, surfaces))
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      im = Image.open(src)
      im.resize((2 * im.width, 2 * im.height), Image.Resampling.NEAREST if 'ground_truth' in src
                else Image.Resampling.BICUBIC).save(dst)
  config = _config(root, **{'data.max_period': 6.0})
  workdir = str(tmp_path / 'run')
  results = study.train_and_evaluate(config, workdir)
  factor, period = results['data']['image_scale'], results['data']['texture_period']
  assert 10 < period < 18 and factor == pytest.approx(6.0 / period)
  side = round(2 * SIZE * factor)
  assert results['data']['image_size'] == [side, side]
  assert json.load(open(os.path.join(workdir, 'model.json')))['image_scale'] == factor
  assert results['pixel']['auroc'] > 0.6  # masks resampled with their images
  summary = assert_predict_equals_evaluate(workdir, str(tmp_path / 'pred'), config.eval.scores)
  assert summary['n_scored'] == 6 + 2 * 2
  maps = np.load(tmp_path / 'pred' / 'maps.npz')
  assert maps['good/000.png'].shape == (side, side)  # at the scale the run saw its images
  again = data_lib.load(config.data)  # as the run's tools load it: the same arrays
  assert again.info['image_scale'] == factor and again.test_masks.shape[1:] == (side, side)
