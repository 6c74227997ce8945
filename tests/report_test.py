"""vae_qc.report: the study, predict and sweep pages, rendered in headless Chromium: the tables
are there and every image loaded. Without Chromium the browser tests fail in CI (env CI set)
and are skipped elsewhere, saying so."""
import json
import os

import numpy as np
import pytest

from vae_qc import browser
from vae_qc import report
from vae_qc import viz
from vae_qc import workdir as wd


def require_browser() -> None:
  """Fails in CI, skips elsewhere, when there is no Chromium."""
  if browser.find_chromium() is None:
    message = ('no Chromium for the report-page tests: install the Debian package chromium '
               '(apt-get install -y chromium; .ci/run does it as root)')
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message + ' (skipped because CI is not set)')


def assert_page_ok(path: str, tables=(), min_images: int = 1) -> dict:
  """Renders ``path``: the tables ``tables`` (ids) have rows, every image loaded."""
  seen = browser.check_page(path)
  ids = {t['id']: t for t in seen['tables']}
  for t in tables:
    assert t in ids and ids[t]['rows'] > 1, (t, seen['tables'])
  assert len(seen['images']) >= min_images, seen['images']
  html = open(path, encoding='utf-8').read()
  assert len(seen['images']) == html.count('<img ')
  for im in seen['images']:
    assert im['complete'] and im['width'] > 0, im  # naturalWidth > 0: the image loaded
  return seen


def fake_study(folder: str) -> str:
  """A print-study workdir as the study writes it (results.json, config.json, scores.csv,
  plots/ with thumbnails), from synthetic numbers."""
  rng = np.random.default_rng(0)
  groups = ['good'] * 6 + ['blob'] * 3 + ['scratch'] * 3
  labels = np.array([g != 'good' for g in groups], int)
  ids = [f'{g}/{i:03d}.png' for i, g in enumerate(groups)]
  values = {'map_max': rng.normal(labels, 1.0), 'neg_elbo': rng.normal(labels, 2.0)}
  m = lambda: {'auroc': 0.8, 'auprc': 0.7, 'f1_max': 0.6, 'fpr_at_95_tpr': 0.4}
  results = {
      'scores': {n: m() for n in values}, 'n_normal': 6, 'n_anomalous': 6,
      'data': {'source': 'generated', 'root': '/x', 'n_train': 10, 'test_per_defect':
               {'blob': 3, 'scratch': 3}, 'skipped_files': [{'path': 'a.png', 'reason': 'bad'}]},
      'eval': {'seconds': 1.0, 'map_samples': 1, 'elbo_samples': 1},
      'bits_per_dim': {'neg_elbo': {'normal': 3.1, 'anomalous': 3.3}},
      'per_defect': {g: {'image': {n: m() for n in values}, 'pixel': {'auroc': .7, 'aupro': .3}}
                     for g in ('blob', 'scratch')},
      'threshold': {'method': 'normal_quantile', 'score': 'map_max', 'value': 0.5,
                    'quantile': 0.99, 'validation': {'source': 'train', 'fraction': 0.1, 'n': 4,
                                                     'n_anomalous': 0},
                    'test_at_threshold': {'precision': 1.0, 'recall': 0.5, 'f1': .67, 'fpr': 0},
                    'test_at_threshold_n': 12},
      'pixel': {'map': 'nll_smooth', 'auroc': 0.7, 'aupro': 0.3, 'n_images': 12,
                'threshold': {'value': 0.9, 'quantile': 0.99}},
      'train': {'steps': 3, 'seconds': 2.0}, 'parallel': {'devices': 1, 'processes': 1}}
  wd.write_json(os.path.join(folder, 'results.json'), results)
  wd.write_json(os.path.join(folder, 'config.json'),
                {'data': {'name': 'print'}, 'model': {'blocks': [4, 8]}, 'seed': 0})
  verdicts = (values['map_max'] >= 0.5).astype(int)
  wd.write_csv(os.path.join(folder, 'scores.csv'), ['id', 'label', 'group', *values, 'verdict'],
               ([i, y, g, *(v[j] for v in values.values()), verdicts[j]]
                for j, (i, y, g) in enumerate(zip(ids, labels, groups))))
  plots = os.path.join(folder, 'plots')
  viz.roc_curves(values, labels, os.path.join(plots, 'roc.png'))
  viz.histograms(values, labels, os.path.join(plots, 'histograms.png'), {'map_max': 0.5})
  viz.roc_per_group(values['map_max'], labels, groups, os.path.join(plots, 'roc_per_defect.png'),
                    'map_max')
  images = rng.random((12, 32, 32, 1)).astype(np.float32)
  maps = rng.random((12, 32, 32))
  names = report.write_thumbnails(os.path.join(plots, 'images'), ids, images, maps, 0.9)
  wd.write_json(os.path.join(plots, 'images', 'index.json'), names)
  return report.write_study_report(folder)


def fake_sweep(out: str) -> str:
  for digit in (0, 1):
    run = os.path.join(out, f'd{digit}_z2_s0')
    wd.write_json(os.path.join(run, 'results.json'),
                  {'scores': {'neg_elbo': {'auroc': 0.9 - 0.4 * digit}}})
    wd.write_json(os.path.join(run, 'config.json'),
                  {'data': {'anomalous_digit': digit}, 'model': {'latent': 2}, 'seed': 0})
  return report.write_sweep_report(out, {2: {0: .96, 1: .73}}, 'Paper: Tonnaer et al.')


def fake_predict(out: str) -> str:
  rng = np.random.default_rng(1)
  ids = ['a.png', 'sub/b.png', 'c.png']
  values = {'map_max': np.array([0.2, 0.9, 0.6])}
  thumbs = report.write_thumbnails(os.path.join(out, 'report_files'), ids,
                                   rng.random((3, 20, 30, 3)), rng.random((3, 20, 30)), 0.8)
  summary = {'threshold': {'score': 'map_max', 'value': 0.5, 'method': 'normal_quantile'},
             'skipped': [{'path': 'd.png', 'reason': 'not an image'}], 'map': 'nll_smooth'}
  return report.write_predict_report(out, summary, ids, values, np.array([0, 1, 1]), thumbs,
                                     '/runs/x')


def test_study_page_has_every_section(tmp_path):
  html = open(fake_study(str(tmp_path)), encoding='utf-8').read()
  import csv  # pylint: disable=g-import-not-at-top
  n_bad = sum(r['verdict'] == '1' for r in csv.DictReader(open(tmp_path / 'scores.csv')))
  for needle in ('id="scores"', 'id="threshold"', 'id="per_defect"', 'id="verdicts"',
                 'id="data"', 'id="config"', 'plots/roc.png', 'plots/histograms.png',
                 'plots/roc_per_defect.png', f'{n_bad} of 12', 'a.png', 'http'):
    if needle == 'http':
      assert 'http://' not in html and 'https://' not in html  # nothing from the network
    else:
      assert needle in html, needle
  # the samples evaluation drew (a budget's plan may set fewer than config.json's)
  assert '<td>eval.map_samples</td><td>1</td>' in html.replace('<td class="l">', '<td>')
  # Verdicts first: the defective images lead the page and the per-image table.
  assert html.index('id="flagged"') < html.index('id="scores"') < html.index('id="verdicts"')
  flagged = html.split('id="flagged"')[1].split('</table>')[0].split('<tr>')[2:]
  assert len(flagged) == n_bad and all('defective' in r for r in flagged)
  rows = html.split('id="verdicts"')[1].split('<tr>')[2:]
  flags = ['defective' in r for r in rows]
  assert flags == sorted(flags, reverse=True) and sum(flags) == n_bad and len(rows) == 12


def test_thumbnail_panels():
  image = np.zeros((10, 20, 1), np.float32)
  amap = np.zeros((10, 20))
  amap[2:4, 5:9] = 1.0
  im = report.thumbnail(image, amap, 0.0, 1.0, threshold=0.5, height=10)
  pixels = np.asarray(im)
  assert im.size[1] == 10 and im.size[0] > 3 * 20  # three panels and gaps
  third = pixels[:, -20:]
  assert third[3, 6, 0] > 100 and third[3, 6, 1] < 50 and third[8, 1].max() == 0  # red = hot


def test_pages_render_in_chromium(tmp_path):
  require_browser()
  study = assert_page_ok(fake_study(str(tmp_path / 'study')),
                         ('scores', 'threshold', 'per_defect', 'verdicts', 'data'), 15)
  assert 'Every test image' in study['headings']
  assert 'Verdicts' in study['headings'] and 'Per defect type' in study['headings']
  predict = assert_page_ok(fake_predict(str(tmp_path / 'predict')), ('verdicts',), 3)
  assert '2 of 3' in predict['text'] and predict['text'].index('2 of 3') < predict['text'].index(
      'sub/b.png')
  sweep = assert_page_ok(fake_sweep(str(tmp_path / 'sweep')), ('per_digit', 'runs'), 1)
  assert '0.96' in sweep['text']  # the paper's AUROC next to ours
  png = browser.screenshot(str(tmp_path / 'sweep' / 'report.html'), str(tmp_path / 's.png'),
                           800, 600)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(png) as im:
    assert im.size == (800, 600) and len(set(im.convert('L').getdata())) > 10  # not blank


def test_missing_image_is_caught(tmp_path):
  require_browser()
  (tmp_path / 'page.html').write_text(report.page('t', report.figure('missing.png', 'x')))
  seen = browser.check_page(str(tmp_path / 'page.html'))
  assert seen['images'][0]['width'] == 0
  assert not [f for f in os.listdir(tmp_path) if f.startswith('.probe-')]  # cleaned up


def test_sweep_tables_and_page_agree(tmp_path):
  fake_sweep(str(tmp_path))
  html = open(tmp_path / 'report.html', encoding='utf-8').read()
  assert '0.900' in html and '0.500' in html and '0.700' in html  # d0, d1, mean
  assert json.load(open(tmp_path / 'd0_z2_s0' / 'results.json'))['scores']
