"""The calibrated residual map (vae_qc.calibration) against an independent numpy reference."""
import numpy as np
import pytest

from vae_qc import calibration
from vae_qc import evaluate
from vae_qc import scores as scores_lib
from vae_qc.errors import ConfigError, VaeQcError


def _reference_gradient(r):
  """Sobel magnitude written out: the 3x3 kernels on the image mirrored at its borders
  (scipy's 'reflect': the edge pixel repeated), float64."""
  r = np.mean(np.asarray(r, np.float64), axis=-1)
  p = np.pad(r, 1, mode='symmetric')
  smooth, diff = np.array([1.0, 2.0, 1.0]), np.array([-1.0, 0.0, 1.0])
  h, w = r.shape
  gy, gx = np.zeros_like(r), np.zeros_like(r)
  for i in range(h):
    for j in range(w):
      win = p[i:i + 3, j:j + 3]
      gy[i, j] = np.sum(np.outer(diff, smooth) * win)
      gx[i, j] = np.sum(np.outer(smooth, diff) * win)
  return np.sqrt(gy ** 2 + gx ** 2)


def _images(seed, n=3, size=12, channels=1):
  rng = np.random.default_rng(seed)
  rec = rng.uniform(0, 1, (n, size, size, channels))
  sq = rng.gamma(2.0, 0.01, (n, size, size))
  return sq, rec


def test_gradient_is_the_sobel_magnitude():
  _, rec = _images(0, n=1, channels=3)
  np.testing.assert_allclose(calibration.gradient_magnitude(rec[0]),
                             _reference_gradient(rec[0]), rtol=1e-12, atol=1e-12)


def test_fit_and_apply_match_a_numpy_reference():
  sq, rec = _images(1)
  cal = calibration.fit(sq, rec, num_bins=4)
  g = np.concatenate([_reference_gradient(r).ravel() for r in rec])
  s = sq.ravel()
  order = np.sort(g)
  n = g.size
  # the bins hold a quarter of the pixels each (no ties among random gradients)
  cuts = [order[n // 4 - 1:n // 4 + 1].mean(), order[n // 2 - 1:n // 2 + 1].mean(),
          order[3 * n // 4 - 1:3 * n // 4 + 1].mean()]
  np.testing.assert_allclose(cal.edges, np.quantile(g, [0.25, 0.5, 0.75]), rtol=1e-12)
  expected = []
  for lo, hi in zip([-np.inf] + cuts, cuts + [np.inf]):
    inside = (g >= lo) & (g < hi)
    assert inside.sum() == n // 4
    expected.append(s[inside].mean())
  np.testing.assert_allclose(cal.expected, expected, rtol=1e-10)
  out = calibration.apply(cal, sq[0], rec[0])
  g0 = _reference_gradient(rec[0])
  ref = sq[0] / np.array(expected)[np.searchsorted(np.array(cuts), g0, side='right')]
  assert out.dtype == np.float32 and out.shape == sq[0].shape
  np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_a_residual_that_follows_the_edges_becomes_flat():
  """Good images whose residual grows with the reconstruction's slope (an edge placed a little
  off): sq_error is many times higher on the edges, cal_error about 1 everywhere."""
  y, x = np.mgrid[:32, :32]
  recs = [(0.5 + 0.4 * np.sin(2 * np.pi * (y + 0.1 * x) / p + ph))[..., None]
          for p, ph in ((6.0, 0.0), (7.0, 1.0), (8.0, 2.0))]
  sqs = [1e-4 + 0.01 * calibration.gradient_magnitude(r) ** 2 for r in recs]
  cal = calibration.fit(sqs, recs)
  for s, r in zip(sqs, recs):
    assert s.max() / s.min() > 50
    c = calibration.apply(cal, s, r)
    assert np.median(c) == pytest.approx(1.0, abs=0.1)
    spread = lambda a: np.quantile(a, 0.95) / np.quantile(a, 0.05)
    assert spread(s) > 50 and spread(c) < 3, (spread(s), spread(c))  # 80-160 against 1.6-2.5
  # a defect (a residual 20 times the good one) stands out wherever it is
  s = sqs[0].copy()
  s[10:14, 10:14] *= 20
  c = calibration.apply(cal, s, recs[0])
  outside = np.ones(c.shape, bool)
  outside[10:14, 10:14] = False
  assert c[10:14, 10:14].min() > c[outside].max()
  assert s[10:14, 10:14].min() < np.quantile(s[outside], 0.9)  # sq_error alone: hidden


def test_selfcal_divides_by_the_images_own_bin_medians():
  """selfcal_error against a numpy reference: cal_error over the median of the image's pixels
  in the same bin, the image's median for a bin with too few of them."""
  sq, rec = _images(3, n=4, size=24)
  cal = calibration.fit(sq, rec, num_bins=4)
  out = calibration.apply_self(cal, sq[0], rec[0])
  c = sq[0] / np.asarray(cal.expected)[np.searchsorted(cal.edges, _reference_gradient(rec[0]),
                                                        side='right')]
  bins = np.searchsorted(cal.edges, _reference_gradient(rec[0]), side='right')
  ref = np.empty_like(c)
  for k in range(4):
    inside = bins == k
    div = np.median(c[inside]) if inside.sum() >= calibration.MIN_BIN_PIXELS else np.median(c)
    ref[inside] = c[inside] / div
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_selfcal_follows_a_surface_whose_edges_leave_more_residual():
  """A test surface whose edges leave 5 times the training edges' residual (another scale or
  contrast): cal_error lights up every edge, selfcal_error stays flat and still shows a
  defect."""
  y, x = np.mgrid[:48, :48]
  recs = [(0.5 + 0.4 * np.sin(2 * np.pi * (y + 0.1 * x) / p + ph))[..., None]
          for p, ph in ((6.0, 0.0), (7.0, 1.0), (8.0, 2.0))]
  sqs = [0.01 + 0.01 * calibration.gradient_magnitude(r) ** 2 for r in recs]
  cal = calibration.fit(sqs, recs)
  g = calibration.gradient_magnitude(recs[1])
  s = 0.01 + 0.05 * g ** 2
  steep, flat = g >= np.quantile(g, 0.75), g <= np.quantile(g, 0.25)
  contrast = lambda a: np.median(a[steep]) / np.median(a[flat])  # edges over flat parts
  assert contrast(calibration.apply(cal, s, recs[1])) > 2
  assert contrast(calibration.apply_self(cal, s, recs[1])) == pytest.approx(1.0, abs=0.2)
  s[20:24, 20:24] *= 20
  c = calibration.apply_self(cal, s, recs[1])
  outside = np.ones(c.shape, bool)
  outside[20:24, 20:24] = False
  assert c[20:24, 20:24].min() > c[outside].max()


def test_a_perfect_reconstruction_stays_finite():
  rec = np.full((2, 8, 8, 1), 0.5)
  cal = calibration.fit(np.zeros((2, 8, 8)), rec)
  assert np.all(cal.expected > 0)
  out = calibration.apply(cal, np.zeros((8, 8)), rec[0])
  assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_with_map_keeps_the_form_of_the_maps():
  sq, rec = _images(2)
  cal = calibration.fit(sq, rec)
  out = calibration.with_map({'sq_error': sq, 'reconstruction': rec}, cal)
  assert out['cal_error'].shape == sq.shape
  listed = calibration.with_map({'sq_error': [sq[0], sq[1][:6]],
                                 'reconstruction': [rec[0], rec[1][:6]]}, cal)
  assert isinstance(listed['cal_error'], list) and listed['cal_error'][1].shape == (6, 12)
  np.testing.assert_array_equal(listed['cal_error'][0], out['cal_error'][0])


def test_fit_images_are_at_most_forty_evenly_spaced():
  images = np.arange(100)[:, None]
  picked = calibration.fit_images(images)
  assert len(picked) == 40 and picked[0, 0] == 0 and picked[-1, 0] == 99
  assert np.all(np.diff(picked[:, 0]) >= 2)
  assert len(calibration.fit_images(images[:7])) == 7
  assert len(calibration.fit_images([np.zeros(3)] * 50)) == 40


def test_save_and_load_round_trip_exactly(tmp_path):
  sq, rec = _images(3)
  cal = calibration.fit(sq, rec)
  calibration.save(str(tmp_path), cal)
  back = calibration.load(str(tmp_path))
  np.testing.assert_array_equal(back.edges, cal.edges)
  np.testing.assert_array_equal(back.expected, cal.expected)


def test_a_missing_or_broken_calibration_says_what_to_do(tmp_path):
  with pytest.raises(VaeQcError, match='map_calibration.json is missing.*cal_error_logratio'):
    calibration.load(str(tmp_path))
  (tmp_path / calibration.FILE).write_text('{"edges": [1, 2]}')
  with pytest.raises(VaeQcError, match='is not a map calibration.*re-run the study'):
    calibration.load(str(tmp_path))


def test_the_calibrated_map_is_a_positive_map_with_a_log_ratio_form():
  assert 'cal_error_logratio' in scores_lib.MAP_NAMES
  settings = evaluate.EvalSettings.from_config(
      {'scores': ('map_topk_logratio',), 'map': 'cal_error_logratio', 'map_sigma': 8.0})
  assert scores_lib.base_map(settings) == calibration.MAP


def test_scoring_the_calibrated_map_without_a_calibration_is_a_config_error():
  settings = evaluate.EvalSettings(scores=('map_topk_logratio',), map='cal_error_logratio')
  scorer = evaluate.Scorer.__new__(evaluate.Scorer)  # nothing compiled: the check comes first
  scorer.settings, scorer.scales, scorer.calibration = settings, (), None
  with pytest.raises(ConfigError, match="needs the run's map calibration"):
    evaluate.score_images(scorer, {}, np.zeros((1, 8, 8, 1), np.float32))


def _reference_contrast(r, window):
  """The standard deviation of each pixel's window × window neighbourhood, written out on the
  image mirrored at its borders (the edge pixel repeated, scipy's 'reflect'), float64."""
  r = np.mean(np.asarray(r, np.float64), axis=-1)
  h = window // 2
  p = np.pad(r, h, mode='symmetric')
  out = np.empty_like(r)
  for i in range(r.shape[0]):
    for j in range(r.shape[1]):
      out[i, j] = np.std(p[i:i + window, j:j + window])
  return out


def test_contrast_is_the_local_standard_deviation():
  _, rec = _images(4, n=1, size=20, channels=3)
  np.testing.assert_allclose(calibration.local_contrast(rec[0], 5),
                             _reference_contrast(rec[0], 5), rtol=1e-9, atol=1e-12)


def test_fit_and_apply_with_a_contrast_window_match_a_numpy_reference(monkeypatch):
  sq, rec = _images(5, n=3, size=24)
  monkeypatch.setattr(calibration, 'MIN_CELL_PIXELS', 100)
  cal = calibration.fit(sq, rec, num_bins=2, window=5, contrast_bins=3)
  g = np.concatenate([_reference_gradient(r).ravel() for r in rec])
  c = np.concatenate([_reference_contrast(r, 5).ravel() for r in rec])
  s = sq.ravel()
  g_cut, c_cuts = np.median(g), np.quantile(c, [1 / 3, 2 / 3])
  np.testing.assert_allclose(cal.edges, [g_cut], rtol=1e-12)
  np.testing.assert_allclose(cal.contrast_edges, c_cuts, rtol=1e-12)
  g_bin = (g >= g_cut).astype(int)
  c_bin = (c >= c_cuts[0]).astype(int) + (c >= c_cuts[1]).astype(int)
  ref = np.zeros((2, 3))
  for k in range(2):
    for l in range(3):
      inside = (g_bin == k) & (c_bin == l)
      ref[k, l] = s[inside].mean() if inside.sum() >= 100 else s[g_bin == k].mean()
  assert min(((g_bin == k) & (c_bin == l)).sum() for k in range(2) for l in range(3)) >= 100
  np.testing.assert_allclose(cal.cell_expected, ref, rtol=1e-10)
  np.testing.assert_allclose(cal.expected, [s[g_bin == 0].mean(), s[g_bin == 1].mean()],
                             rtol=1e-10)
  out = calibration.apply(cal, sq[1], rec[1])
  n = sq[0].size
  np.testing.assert_allclose(out.ravel(), s[n:2 * n] / ref[g_bin, c_bin][n:2 * n], rtol=1e-6)
  # a cell with too few good pixels takes its slope bin's value
  monkeypatch.setattr(calibration, 'MIN_CELL_PIXELS', 10 ** 9)
  sparse = calibration.fit(sq, rec, num_bins=2, window=5, contrast_bins=3)
  np.testing.assert_allclose(sparse.cell_expected, np.repeat(sparse.expected[:, None], 3, 1))
  np.testing.assert_allclose(calibration.apply(sparse, sq[1], rec[1]),
                             calibration.apply(calibration.fit(sq, rec, num_bins=2),
                                               sq[1], rec[1]), rtol=1e-6)


def test_a_rough_texture_that_leaves_more_residual_becomes_flat(monkeypatch):
  """Good images, smooth on the left and rough on the right (8 times the contrast), whose
  residual is 64 times higher on the rough half, at every slope. The slope alone leaves the
  rough half brighter than the smooth one, and its flattest pixels (where the smooth half's
  are) far above a defect on the smooth half; with the contrast window the map is flat and
  the defect stands above every good pixel away from the seam between the halves."""
  monkeypatch.setattr(calibration, 'MIN_CELL_PIXELS', 20)  # 3 small images: sparse cells
  y, x = np.mgrid[:64, :64]
  amplitude = np.where(x < 32, 0.05, 0.4)
  recs = [(0.5 + amplitude * np.sin(2 * np.pi * x / p + ph) * np.sin(2 * np.pi * y / 7.0)
           )[..., None] for p, ph in ((6.0, 0.0), (7.0, 1.0), (5.0, 2.0))]
  rng = np.random.default_rng(0)
  sqs = [1e-5 + 0.05 * amplitude ** 2 * rng.uniform(1.0, 1.2, amplitude.shape) for _ in recs]
  plain = calibration.fit(sqs, recs, num_bins=4)
  windowed = calibration.fit(sqs, recs, num_bins=4, window=9, contrast_bins=4)
  halves = lambda a: np.median(a[:, 40:]) / np.median(a[:, :24])  # rough over smooth
  assert halves(calibration.apply(plain, sqs[0], recs[0])) > 2  # 2.8
  assert halves(calibration.apply(windowed, sqs[0], recs[0])) == pytest.approx(1.0, abs=0.1)
  s = sqs[0].copy()
  s[30:34, 10:14] *= 5
  outside = np.ones(s.shape, bool)
  outside[26:38, 6:18] = False
  outside[:, 24:40] = False  # the seam, where the window holds both halves
  c = calibration.apply(windowed, s, recs[0])
  assert c[30:34, 10:14].min() > 3 > c[outside].max()  # 4.3 against 1.1
  c = calibration.apply(plain, s, recs[0])
  assert c[30:34, 10:14].min() < 2 and c[outside].max() > 10  # 1.5 against 25.7


@pytest.mark.parametrize('window', [-1, 1, 2, 4, 7.5])
def test_a_contrast_window_that_is_not_odd_and_at_least_3_is_a_config_error(window):
  with pytest.raises(ConfigError, match='map_contrast_window.*0 .*odd number >= 3'):
    calibration.check_window(window)
  with pytest.raises(ConfigError, match='map_contrast_window'):
    evaluate.EvalSettings.from_config({'map': 'cal_error_logratio', 'map_sigma': 8.0,
                                       'map_contrast_window': window})


def test_a_contrast_table_round_trips_and_old_tables_still_load(tmp_path):
  sq, rec = _images(6, size=24)
  cal = calibration.fit(sq, rec, window=5)
  calibration.save(str(tmp_path), cal)
  back = calibration.load(str(tmp_path))
  assert back.window == 5
  for name in ('edges', 'expected', 'contrast_edges', 'cell_expected'):
    np.testing.assert_array_equal(getattr(back, name), getattr(cal, name))
  np.testing.assert_array_equal(calibration.apply(back, sq[0], rec[0]),
                                calibration.apply(cal, sq[0], rec[0]))
  # a table saved before the contrast window: the slope alone, as it was fitted
  old = calibration.fit(sq, rec)
  (tmp_path / calibration.FILE).write_text(
      '{"map": "cal_error", "edges": %s, "expected": %s}' % (
          list(map(float, old.edges)), list(map(float, old.expected))))
  back = calibration.load(str(tmp_path))
  assert back.window == 0 and back.cell_expected is None
  np.testing.assert_array_equal(calibration.apply(back, sq[0], rec[0]),
                                calibration.apply(old, sq[0], rec[0]))
  # cells that do not match the bins are a broken table, not an IndexError later
  broken = cal.to_json()
  broken['cell_expected'] = broken['cell_expected'][:-1]
  import json  # pylint: disable=g-import-not-at-top
  (tmp_path / calibration.FILE).write_text(json.dumps(broken))
  with pytest.raises(VaeQcError, match='is not a map calibration.*bins need as many cell'):
    calibration.load(str(tmp_path))


def test_an_abs_error_calibration_divides_the_abs_error_map(tmp_path):
  """config.eval.map_residual='abs_error' (a Laplace likelihood's excess −log p): the table is
  fitted on and applied to ``abs_error``, the same arithmetic as on ``sq_error``, and the
  residual it divides travels with the saved table."""
  sq, rec = _images(7, size=16)
  ab = np.sqrt(sq)  # a different map under the other name: which one is divided shows
  cal = calibration.fit(ab, rec, window=5, residual='abs_error')
  assert cal.residual == 'abs_error'
  same = calibration.fit(ab, rec, window=5)  # the same numbers fitted as 'sq_error'
  np.testing.assert_array_equal(cal.cell_expected, same.cell_expected)
  out = calibration.with_map({'sq_error': sq, 'abs_error': ab, 'reconstruction': rec}, cal)
  np.testing.assert_array_equal(out['cal_error'],
                                calibration.with_map({'sq_error': ab, 'reconstruction': rec},
                                                     same)['cal_error'])
  calibration.save(str(tmp_path), cal)
  back = calibration.load(str(tmp_path))
  assert back.residual == 'abs_error'
  np.testing.assert_array_equal(
      calibration.with_map({'sq_error': sq, 'abs_error': ab, 'reconstruction': rec},
                           back)['cal_error'], out['cal_error'])
  assert calibration.fit(sq, rec).to_json()['residual'] == 'sq_error'


@pytest.mark.parametrize('residual', ['nll', 'z_error', ''])
def test_a_residual_that_is_not_sq_or_abs_error_is_a_config_error(residual):
  sq, rec = _images(8)
  with pytest.raises(ConfigError, match="map_residual.*'sq_error', 'abs_error'"):
    calibration.fit(sq, rec, residual=residual)
  with pytest.raises(ConfigError, match='map_residual'):
    evaluate.EvalSettings.from_config({'map': 'cal_error_logratio', 'map_sigma': 8.0,
                                       'map_residual': residual})
