"""The print study on a tiny generated dataset, trained on fixed tiles (the paper's model and
scores); predict == evaluate. The patch recipe has its own test: print_patch_test.py."""
import csv
import json
import os

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from tests import report_test
from tests.integration.predict_check import assert_predict_equals_evaluate
from vae_qc import config as config_lib
from vae_qc import predict
from vae_qc import study

pytestmark = pytest.mark.slow  # a whole print study and predict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _print_config():
  return config_lib.load_file(os.path.join(ROOT, 'experiments', 'configs', 'print_cpu.py'))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  base = tmp_path_factory.mktemp('print')
  overrides = {
      'data.generated_dir': str(base / 'data'), 'data.generate.size': 64,
      'data.generate.n_train': 40, 'data.generate.n_test_good': 6,
      'data.generate.n_test_defect': 2, 'data.image_size': 64,
      'data.tile_size': 32, 'data.tile_stride': 16, 'data.tile_aggregate': 'topk',
      'data.patch_size': 0, 'data.scales': (), 'model.arch': 'global',
      'model.likelihood': 'gaussian_fixed',
      'eval.scores': ('neg_elbo', 'recon_error', 'kl'), 'eval.map': 'nll',
      'model.blocks': (4, 8), 'model.fc': 16, 'model.latent': 4,
      'train.steps': 0, 'train.epochs': 1, 'train.batch_size': 64, 'train.log_every_steps': 2,
      'train.time_budget_s': 0.0,
      'eval.elbo_samples': 2, 'eval.map_samples': 2, 'eval.batch_size': 64,
      'eval.num_plot_images': 2, 'threshold.val_fraction': 0.2,
  }
  config = config_lib.apply_overrides(_print_config(), overrides)
  workdir = str(base / 'run')
  return workdir, study.train_and_evaluate(config, workdir), config


def test_localisation_results_and_pictures(run):
  workdir, results, _ = run
  assert 0.0 <= results['pixel']['auroc'] <= 1.0 and 0.0 <= results['pixel']['aupro'] <= 1.0
  assert set(results['per_defect']) == {'blob', 'stringing', 'under_extrusion', 'over_extrusion',
                                        'scratch', 'layer_shift', 'warping'}
  for d in results['per_defect'].values():
    assert {'image', 'pixel'} <= set(d) and 'auroc' in d['image']['neg_elbo']
  thr = results['threshold']
  assert thr['method'] == 'normal_quantile' and thr['validation']['source'] == 'train'
  assert results['train']['images'] == 32 * 9  # 32 of 40 train images (8 held out) × 9 tiles
  for png in ('roc.png', 'roc_per_defect.png', 'histograms.png', 'localisation.png'):
    assert os.path.getsize(os.path.join(workdir, 'plots', png)) > 1000
  rows = list(csv.DictReader(open(os.path.join(workdir, 'scores.csv'))))
  assert len(rows) == 6 + 7 * 2 and {'verdict', 'neg_elbo'} <= set(rows[0])
  saved = json.load(open(os.path.join(workdir, 'results.json')))
  assert saved['data']['source'] == 'generated' and saved['data']['n_skipped_files'] == 0


def test_image_aurocs_are_those_of_scores_csv(run):
  """results.json's AUROCs, overall and per defect, are sklearn's on scores.csv's columns."""
  workdir, results, config = run
  rows = list(csv.DictReader(open(os.path.join(workdir, 'scores.csv'))))
  labels = np.array([int(r['label']) for r in rows])
  groups = np.array([r['group'] for r in rows])
  assert sorted(set(groups[labels == 0])) == ['good'] and results['n_anomalous'] == 14
  for name in config.eval.scores:
    values = np.array([float(r[name]) for r in rows])
    assert results['scores'][name]['auroc'] == pytest.approx(
        sk_metrics.roc_auc_score(labels, values), abs=1e-12), name
    for defect, per in results['per_defect'].items():
      use = (groups == defect) | (labels == 0)
      assert per['image'][name]['auroc'] == pytest.approx(
          sk_metrics.roc_auc_score(labels[use], values[use]), abs=1e-12), (name, defect)
  saved = json.load(open(os.path.join(workdir, 'results.json')))
  assert {n: saved['scores'][n]['auroc'] for n in config.eval.scores} == {
      n: results['scores'][n]['auroc'] for n in config.eval.scores}


def test_predict_equals_evaluate(run, tmp_path):
  workdir, results, config = run
  summary = assert_predict_equals_evaluate(workdir, str(tmp_path), config.eval.scores)
  assert summary['n_scored'] == 20 and not summary['skipped']
  maps = np.load(tmp_path / 'maps.npz')
  assert maps[sorted(maps.files)[0]].shape == (64, 64)


def test_predict_skips_and_lists_bad_files(run, tmp_path):
  workdir, _, _ = run
  (tmp_path / 'in').mkdir()
  (tmp_path / 'in' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
  data_root = json.load(open(os.path.join(workdir, 'results.json')))['data']['root']
  good_dir = os.path.join(data_root, 'test', 'good')
  good = os.path.join(good_dir, sorted(os.listdir(good_dir))[0])
  (tmp_path / 'in' / 'ok.png').write_bytes(open(good, 'rb').read())
  summary = predict.predict(workdir, str(tmp_path / 'in'), str(tmp_path / 'out'))
  assert summary['n_scored'] == 1 and summary['skipped'][0]['path'].endswith('broken.png')


def test_report_pages_render(run, tmp_path):
  """report.html of the study (every test image with its map, defective first) and of
  predict, in headless Chromium: tables there, every image loaded."""
  report_test.require_browser()
  workdir, results, _ = run
  seen = report_test.assert_page_ok(os.path.join(workdir, 'report.html'),
                                    ('scores', 'threshold', 'per_defect', 'verdicts'), 20 + 4)
  assert 'test images are called defective' in seen['text']
  data_root = json.load(open(os.path.join(workdir, 'results.json')))['data']['root']
  predict.predict(workdir, os.path.join(data_root, 'test'), str(tmp_path))
  seen = report_test.assert_page_ok(str(tmp_path / 'report.html'), ('verdicts',), 20)
  assert 'of 20 images are called defective' in seen['text']
