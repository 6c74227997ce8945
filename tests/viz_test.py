"""vae_qc.viz: every figure is written as a non-empty PNG of the expected size."""
import os

import numpy as np
from PIL import Image
import pytest

from vae_qc import viz


@pytest.fixture(scope='module')
def scores():
  rng = np.random.default_rng(0)
  labels = np.array([0] * 30 + [1] * 20)
  values = {'neg_elbo': rng.normal(labels, 1.0), 'kl': rng.normal(0, 1, 50)}
  return values, labels


def _png(path) -> tuple[int, int]:
  assert os.path.getsize(path) > 1000, path
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return image.size


def test_roc_curves_and_histograms(tmp_path, scores):
  values, labels = scores
  roc = viz.roc_curves(values, labels, str(tmp_path / 'plots' / 'roc.png'), title='t')
  assert roc == str(tmp_path / 'plots' / 'roc.png')  # the folder is created
  w, h = _png(roc)
  assert 300 < w < 700 and 300 < h < 700  # 4.5 in × 110 dpi, tight
  hist = viz.histograms(values, labels, str(tmp_path / 'hist.png'), thresholds={'kl': 0.5})
  w2, h2 = _png(hist)
  assert w2 > 1.5 * h2  # one panel per score, side by side


def test_roc_per_group(tmp_path, scores):
  values, labels = scores
  groups = ['good'] * 30 + ['blob'] * 10 + ['scratch'] * 10
  _png(viz.roc_per_group(values['neg_elbo'], labels, groups, str(tmp_path / 'g.png'),
                         'neg_elbo'))


def test_reconstruction_grid_and_anomaly_gallery(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.random((3, 16, 16, 1)).astype(np.float32)
  grid = viz.reconstruction_grid([('normal', x, x[::-1]), ('anomalous', x[:2], x[:2])],
                                 str(tmp_path / 'rec.png'))
  w, h = _png(grid)
  assert w > 2 * h  # 2 rows of 3 × 3 panels
  row = dict(image=x[0], reconstruction=x[1], map=rng.random((16, 16)),
             gt=np.eye(16, dtype=bool), pred=np.zeros((16, 16), bool), title='blob/000')
  gallery = viz.anomaly_gallery([row, dict(row, gt=None, title='good/000')],
                                str(tmp_path / 'gallery.png'), 'nll')
  w, h = _png(gallery)
  assert h > w / 2  # two rows of three panels


def test_anomaly_gallery_titles_each_row_with_its_own_map(tmp_path, monkeypatch):
  rng = np.random.default_rng(2)
  x = rng.random((16, 16, 1)).astype(np.float32)
  row = dict(image=x, reconstruction=x, map=rng.random((16, 16)), gt=None,
             pred=np.zeros((16, 16), bool), title='t')
  titles = []
  save = viz._save  # pylint: disable=protected-access
  monkeypatch.setattr(viz, '_save', lambda fig, path: titles.extend(
      ax.get_title() for ax in fig.axes) or save(fig, path))
  viz.anomaly_gallery([dict(row, map_name='sq_error_logratio'), dict(row, map=100 * row['map'])],
                      str(tmp_path / 'g.png'), 'z_error_logratio')
  assert titles[2].startswith('sq_error_logratio map') and titles[5].startswith('z_error_logratio')
