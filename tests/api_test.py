"""The Python API (vae_qc.load_run, Run.score, vae_qc.run_study) on a tiny trained MNIST run: its
scores are the run's scores.csv and predict's; bad input is one clear line; predict on 8
devices gives the scores of 1; the study's and predict's report pages render in Chromium."""
import csv
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

import experiments.configs.mnist as mnist_config
from tests.conftest import tiny_mnist_overrides
from tests.conftest import xla_env
from tests.report_test import assert_page_ok
from tests.report_test import require_browser
import vae_qc
from vae_qc import config as config_lib
from vae_qc import data as data_lib
from vae_qc import predict
from vae_qc.errors import DataError, VaeQcError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  return config_lib.apply_overrides(mnist_config.get_config(),
                                    dict(tiny_mnist_overrides(), **{'data.source': 'bundled'}))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir, results, dataset, folder of 12 test images as PNG files)."""
  base = tmp_path_factory.mktemp('api')
  config = _config()
  results = vae_qc.run_study(config, str(base / 'run'))
  dataset = data_lib.load(config.data)
  folder = base / 'images'
  (folder / 'sub').mkdir(parents=True)
  for j in range(12):
    pixels = np.round(dataset.test_images[j, ..., 0] * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / ('sub' if j % 3 else '') / f'im{j:02d}.png')
  return str(base / 'run'), results, dataset, str(folder)


def _csv(path):
  return {r['id']: r for r in csv.DictReader(open(path))}


@pytest.mark.slow  # trains a tiny MNIST run (module fixture)
def test_api_scores_are_the_runs_scores_csv(trained):
  workdir, results, dataset, _ = trained
  run = vae_qc.load_run(workdir)
  assert run.threshold == results['threshold'] and run.channels == 1
  result = run.score(dataset.test_images)
  saved = _csv(os.path.join(workdir, 'scores.csv'))
  assert set(result.scores) == set(mnist_config.get_config().eval.scores)
  for j, i in enumerate(dataset.test_ids):
    for name, values in result.scores.items():
      assert float(saved[i][name]) == float(values[j]), (i, name)  # the same number, exactly
    assert int(saved[i]['verdict']) == result.verdicts[j]
  maps = run.maps(dataset.test_images[:3])
  assert maps['nll'].shape == (3, 28, 28) and maps['reconstruction'].shape == (3, 28, 28, 1)
  one = run.score(dataset.test_images[5])  # one image [H, W, C]
  # Another batch shape (1, not 40): the same up to float rounding of the compiled batch.
  assert one.scores['neg_elbo'][0] == pytest.approx(result.scores['neg_elbo'][5], rel=1e-6)
  assert 'report.html' in os.listdir(workdir)


@pytest.mark.slow
def test_folder_scores_equal_predicts_and_eight_devices_change_nothing(trained, tmp_path):
  workdir, _, _, folder = trained
  summary = predict.predict(workdir, folder, str(tmp_path / 'one'))
  assert summary['n_scored'] == 12
  ours = vae_qc.load_run(workdir).score(folder)
  theirs = _csv(tmp_path / 'one' / 'scores.csv')
  assert sorted(ours.ids) == sorted(theirs) and 'sub/im01.png' in theirs
  for row in ours.table():
    for name in ('neg_elbo', 'neg_log_px', 'recon_error', 'kl'):
      assert float(theirs[row['id']][name]) == row[name], (row['id'], name)
  # predict.py on 8 fake CPU devices (data parallel, as evaluation): the same scores.
  env = dict(xla_env(8),
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  p = subprocess.run([sys.executable, 'experiments/predict.py', f'--workdir={workdir}',
                      f'--images={folder}', f'--out={tmp_path / "eight"}'], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'Data parallel over 8 cpu device(s)' in p.stderr
  eight = _csv(tmp_path / 'eight' / 'scores.csv')
  assert set(eight) == set(theirs)
  for i in eight:
    for name in ('neg_elbo', 'neg_log_px', 'recon_error', 'kl'):
      a, b = float(eight[i][name]), float(theirs[i][name])
      assert abs(a - b) <= 1e-5 * (1 + abs(b)), (i, name, a, b)
    assert eight[i]['verdict'] == theirs[i]['verdict']


@pytest.mark.slow
def test_one_photo_in_three_file_formats_scores_the_same(trained, tmp_path):
  """An 8-bit grey PNG, a 16-bit PNG and a grey RGB PNG of one image: read, converted (to
  luminance) and scored with the same Monte-Carlo noise, so their scores agree."""
  workdir, _, dataset, _ = trained
  pixels = np.round(dataset.test_images[:2, ..., 0] * 255).astype(np.uint8)
  for j, p in enumerate(pixels):
    Image.fromarray(p).save(tmp_path / f'{j}_grey.png')
    Image.fromarray(p.astype(np.uint16) * 257).save(tmp_path / f'{j}_sixteen.png')
    Image.fromarray(np.repeat(p[..., None], 3, axis=-1)).save(tmp_path / f'{j}_rgb.png')
  result = vae_qc.load_run(workdir).score(str(tmp_path))
  rows = {row['id']: row for row in result.table()}
  assert len(rows) == 6
  for j in range(2):
    ref = rows[f'{j}_grey.png']
    for kind in ('sixteen', 'rgb'):
      for name in ('neg_elbo', 'neg_log_px', 'kl'):
        assert rows[f'{j}_{kind}.png'][name] == pytest.approx(ref[name], rel=1e-6, abs=1e-6), (
            j, kind, name)
  assert rows['0_grey.png']['neg_elbo'] != pytest.approx(rows['1_grey.png']['neg_elbo'])


@pytest.mark.slow
def test_report_pages_of_a_real_run_render(trained, tmp_path):
  require_browser()
  workdir, _, _, folder = trained
  assert_page_ok(os.path.join(workdir, 'report.html'), ('scores', 'threshold', 'data'), 3)
  predict.predict(workdir, folder, str(tmp_path))
  seen = assert_page_ok(str(tmp_path / 'report.html'), ('verdicts',), 12)
  assert 'of 12 images are called defective' in seen['text']


@pytest.mark.slow
def test_wrong_channel_count_and_empty_folder_are_one_line_errors(trained, tmp_path):
  workdir, _, dataset, _ = trained
  run = vae_qc.load_run(workdir)
  rgb = np.repeat(dataset.test_images[:2], 3, axis=-1)
  with pytest.raises(DataError, match=r'takes 1-channel images') as e:
    run.score(rgb)
  assert '\n' not in str(e.value) and '[2, 28, 28, 3]' in str(e.value)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match='no images') as e:
    run.score(str(tmp_path / 'empty'))
  assert '\n' not in str(e.value)
  with pytest.raises(DataError, match='no images'):
    predict.predict(workdir, str(tmp_path / 'empty'), str(tmp_path / 'out'))


def test_workdir_without_a_trained_run(tmp_path):
  for workdir in (tmp_path, tmp_path / 'missing'):
    with pytest.raises(VaeQcError, match='not a trained run|does not exist') as e:
      vae_qc.load_run(str(workdir))
    assert '\n' not in str(e.value)
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'model.json').write_text('{}')
  with pytest.raises(VaeQcError, match='model.json'):  # not a trained run's model.json
    vae_qc.load_run(str(tmp_path))


def test_cli_errors_are_one_line(tmp_path):
  """predict.py: a workdir without a run and an empty image folder: 'error: ...', status 2."""
  (tmp_path / 'empty').mkdir()
  p = subprocess.run([sys.executable, 'experiments/predict.py', f'--workdir={tmp_path}',
                      f'--images={tmp_path / "empty"}', f'--out={tmp_path / "out"}'], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 2 and 'Traceback' not in p.stderr
  errors = [l for l in p.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'is not a trained run: config.json is missing' in errors[0]


def test_api_is_lazy():
  """``import vae_qc.<module>`` does not import the API (and so JAX) by itself."""
  code = ('import sys, vae_qc.errors; assert "vae_qc.api" not in sys.modules; '
          'import vae_qc; assert callable(vae_qc.load_run) and callable(vae_qc.run_study)')
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=120)
