"""Tests of the position calibration (vae_qc.position) against an independent numpy reference."""
import ml_collections
import numpy as np
import pytest

from vae_qc import evaluate
from vae_qc import position as pos_lib
from vae_qc.errors import VaeQcError


def _reference_cell(h, w, i, j, edges):
  """The cell of pixel (i, j) by a plain loop over the edges."""
  def bin_of(d):
    return sum(d >= e for e in edges)
  return bin_of(min(i, h - 1 - i)), bin_of(min(j, w - 1 - j))


def _good_maps(rng, n=12, h=40, w=48):
  """Maps brighter and noisier near the border, as sliding-window maps are."""
  y, x = np.mgrid[:h, :w]
  d = np.minimum(np.minimum(y, h - 1 - y), np.minimum(x, w - 1 - x))
  level = 0.2 + 0.3 * np.exp(-d / 4.0)
  return level + (0.1 + 0.2 * np.exp(-d / 4.0)) * rng.standard_normal((n, h, w))


def test_fit_and_apply_match_a_numpy_reference():
  rng = np.random.default_rng(0)
  maps = _good_maps(rng)
  edges = (2, 4, 8, 12)
  pos = pos_lib.fit(maps, edges)
  h, w = maps.shape[1:]
  cell = np.array([[_reference_cell(h, w, i, j, edges) for j in range(w)] for i in range(h)])
  n = len(edges) + 1
  for by in range(n):
    for bx in range(n):
      sel = (cell[..., 0] == by) & (cell[..., 1] == bx)
      if not sel.any():
        assert np.isnan(pos.mean[by, bx])
        continue
      vals = maps[:, sel].astype(np.float64)
      np.testing.assert_allclose(pos.mean[by, bx], vals.mean(), rtol=1e-10)
      np.testing.assert_allclose(pos.sd[by, bx], vals.std(), rtol=1e-8)
  iy, ix = pos.inner
  assert (iy, ix) == (4, 4)  # 40 x 48 px reach distance 19 and 23: the last bin, >= 12
  test = _good_maps(np.random.default_rng(1), n=1)[0]
  want = np.empty_like(test)
  for i in range(h):
    for j in range(w):
      by, bx = cell[i, j]
      want[i, j] = ((test[i, j] - pos.mean[by, bx]) / pos.sd[by, bx] * pos.sd[iy, ix]
                    + pos.mean[iy, ix])
  np.testing.assert_allclose(pos_lib.apply(pos, test), want, rtol=1e-5, atol=1e-6)


def test_the_good_maps_come_out_alike_at_every_position():
  """Applied to the maps it was fitted on, every cell has the innermost cell's mean and sd;
  the interior keeps its values."""
  maps = _good_maps(np.random.default_rng(2))
  pos = pos_lib.fit(maps)
  out = np.stack([pos_lib.apply(pos, m) for m in maps])
  by, bx = pos_lib.cells(*maps.shape[1:])
  iy, ix = pos.inner
  for cy in np.unique(by):
    for cx in np.unique(bx):
      sel = (by == cy) & (bx == cx)
      np.testing.assert_allclose(out[:, sel].mean(), pos.mean[iy, ix], atol=1e-5)
      np.testing.assert_allclose(out[:, sel].std(), pos.sd[iy, ix], rtol=1e-4)
  inner = (by == iy) & (bx == ix)
  np.testing.assert_allclose(out[:, inner], maps[:, inner], rtol=1e-5, atol=1e-6)
  # before: the border pixels were the brightest of good maps; after, no longer
  border = (by == 0) | (bx == 0)
  assert maps[:, border].mean() > maps[:, ~border].mean() + 0.1
  assert abs(out[:, border].mean() - out[:, ~border].mean()) < 0.02


def test_larger_photos_and_lists_and_flat_maps():
  pos = pos_lib.fit(_good_maps(np.random.default_rng(3), h=24, w=24))  # reach distance 11
  big = np.random.default_rng(4).random((100, 80))
  out = pos_lib.apply(pos, big)
  assert out.shape == big.shape and out.dtype == np.float32
  by, bx = pos_lib.cells(100, 80)
  far = (by >= 3) & (bx >= 3)  # beyond the last bin the training maps reached: innermost
  iy, ix = pos.inner
  assert (iy, ix) == (3, 3)
  np.testing.assert_allclose(out[far], big[far], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[~far], big[~far])
  mixed = pos_lib.fit([np.ones((30, 30)), np.ones((40, 20))])  # lists, constant maps
  np.testing.assert_array_equal(pos_lib.apply(mixed, np.full((50, 50), 3.0)), 3.0)
  with pytest.raises(VaeQcError, match='at least one good map'):
    pos_lib.fit([])


def test_saved_and_loaded(tmp_path):
  pos = pos_lib.fit(_good_maps(np.random.default_rng(5), h=20, w=20))
  assert np.isnan(pos.mean).any()  # cells a 20-px map never reaches
  pos_lib.save(str(tmp_path), pos)
  again = pos_lib.load(str(tmp_path))
  np.testing.assert_array_equal(again.mean, pos.mean)
  np.testing.assert_array_equal(again.sd, pos.sd)
  assert again.edges == pos.edges and again.inner == pos.inner
  with pytest.raises(VaeQcError, match='map_position.json is missing'):
    pos_lib.load(str(tmp_path / 'none'))
  (tmp_path / pos_lib.FILE).write_text('{"edges": [1]}')
  with pytest.raises(VaeQcError, match='is not a position calibration.*re-run the study'):
    pos_lib.load(str(tmp_path))


def test_a_run_saved_before_the_field_scores_without_it():
  """EvalSettings of a saved config without eval.map_position: off, as the run was scored."""
  old = ml_collections.ConfigDict({'scores': ('map_topk_logratio',), 'map': 'sq_error_logratio'})
  assert evaluate.EvalSettings.from_config(old).map_position is False
  new = ml_collections.ConfigDict({'scores': ('map_topk_logratio',), 'map': 'sq_error_logratio',
                                   'map_position': True})
  assert evaluate.EvalSettings.from_config(new).map_position is True
