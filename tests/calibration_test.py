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
