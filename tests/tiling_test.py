"""Tests of tiling, stitching and tile-score aggregation."""
import numpy as np
import pytest

from vae_qc.data import tiling
from vae_qc.errors import ConfigError, DataError


@pytest.mark.parametrize('shape,tile,stride', [((37, 53, 1), 16, 16), ((37, 53, 3), 16, 7),
                                               ((16, 16, 1), 16, 4), ((101, 64, 2), 32, 31),
                                               ((17, 40, 1), 17, 1)])
def test_round_trip(shape, tile, stride):
  image = np.random.default_rng(0).random(shape, dtype=np.float32)
  tiles, origins = tiling.split_tiles(image, tile, stride)
  assert tiles.shape == (len(origins), tile, tile, shape[2])
  assert origins[:, 0].max() == shape[0] - tile and origins[:, 1].max() == shape[1] - tile
  for t, (r, c) in zip(tiles, origins):
    np.testing.assert_array_equal(t, image[r:r + tile, c:c + tile])
  for channel in range(shape[2]):
    np.testing.assert_array_equal(tiling.stitch(tiles[..., channel], origins, shape[:2]),
                                  image[..., channel])


def test_origins_snap_to_border():
  _, origins = tiling.split_tiles(np.zeros((10, 25, 1)), 8, 8)
  assert sorted(set(origins[:, 0].tolist())) == [0, 2]
  assert sorted(set(origins[:, 1].tolist())) == [0, 8, 16, 17]


def test_stitch_averages_overlaps():
  maps = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)])
  stitched = tiling.stitch(maps, np.array([[0, 0], [0, 2]]), (4, 6))
  np.testing.assert_array_equal(stitched[0], [1, 1, 2, 2, 3, 3])


@pytest.mark.parametrize('shape,tile,stride', [((37, 53), 16, 7), ((64, 64), 16, 8),
                                               ((45, 30), 8, 3)])
def test_stitch_is_a_loop_over_the_tiles_bit_for_bit(shape, tile, stride):
  # The reference: each tile added in turn in float64, then the mean per pixel.
  _, origins = tiling.split_tiles(np.zeros(shape + (1,), np.float32), tile, stride)
  maps = np.random.default_rng(1).standard_normal((len(origins), tile, tile)).astype(np.float32)
  total, count = np.zeros(shape), np.zeros(shape, np.int64)
  for m, (r, c) in zip(maps, origins):
    total[r:r + tile, c:c + tile] += m
    count[r:r + tile, c:c + tile] += 1
  np.testing.assert_array_equal(tiling.stitch(maps, origins, shape),
                                (total / count).astype(np.float32))


def test_one_stitcher_serves_every_map_of_a_layout():
  shape, tile = (37, 53), 16
  _, origins = tiling.split_tiles(np.zeros(shape + (1,), np.float32), tile, 7)
  maps = np.random.default_rng(2).standard_normal((3, len(origins), tile, tile))
  stitch = tiling.Stitcher(origins, shape, (tile, tile))
  for m in maps:  # the same object, map after map: each as a stitch of its own
    np.testing.assert_array_equal(stitch(m), tiling.stitch(m, origins, shape))
  with pytest.raises(DataError, match=r'needs maps \[%d, 16, 16\]' % len(origins)):
    stitch(maps[0, :, :8])


def test_stitch_uncovered_pixels():
  with pytest.raises(DataError, match='cover'):
    tiling.stitch(np.zeros((1, 4, 4)), np.array([[0, 0]]), (4, 8))
  with pytest.raises(DataError, match='outside'):
    tiling.stitch(np.zeros((2, 4, 4)), np.array([[0, 0], [0, 6]]), (4, 8))
  with pytest.raises(DataError, match='outside'):  # its flat index would wrap to the row above
    tiling.stitch(np.zeros((3, 4, 4)), np.array([[0, 0], [0, 4], [4, -2]]), (8, 8))


def test_errors():
  with pytest.raises(DataError, match='smaller than the tile'):
    tiling.split_tiles(np.zeros((10, 40, 1)), 16, 8)
  with pytest.raises(ConfigError, match='stride'):
    tiling.split_tiles(np.zeros((40, 40, 1)), 16, 17)
  with pytest.raises(DataError, match=r'\[H, W, C\]'):
    tiling.split_tiles(np.zeros((40, 40)), 16, 8)


def test_aggregate():
  scores = np.array([0.5, 3.0, 1.0, 2.0])
  assert tiling.aggregate(scores, 'max') == 3.0
  assert tiling.aggregate(scores, 'mean') == 1.625
  assert tiling.aggregate(scores, 'topk', 2) == 2.5
  assert tiling.aggregate(scores, 'topk', 10) == 1.625
  with pytest.raises(ConfigError, match='median'):
    tiling.aggregate(scores, 'median')
  with pytest.raises(ConfigError):
    tiling.aggregate(scores, 'topk', 0)
  with pytest.raises(DataError):
    tiling.aggregate([], 'max')


def test_random_patches_cover_every_offset_and_repeat_per_step():
  h, w, size = 7, 9, 4
  image = np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1)
  images = np.repeat(image, 50, axis=0)
  seen = set()
  for step in range(60):
    patches = tiling.random_patches(images, size, seed=3, step=step)
    assert patches.shape == (50, size, size, 1)
    for p in patches:  # the top-left value gives the offset
      r, c = divmod(int(p[0, 0, 0]), w)
      np.testing.assert_array_equal(p[..., 0], image[0, r:r + size, c:c + size, 0])
      seen.add((r, c))
  assert seen == {(r, c) for r in range(h - size + 1) for c in range(w - size + 1)}
  np.testing.assert_array_equal(tiling.random_patches(images, size, 3, 5),
                                tiling.random_patches(images, size, 3, 5))
  assert not np.array_equal(tiling.random_patches(images, size, 3, 5),
                            tiling.random_patches(images, size, 3, 6))
  with pytest.raises(ConfigError, match='patch size 8 must be between 1 and the image size'):
    tiling.random_patches(images, 8, 0, 0)


@pytest.mark.parametrize('augment, count', [('none', 1), ('hflip', 2), ('vflip', 2),
                                            ('flips', 4), ('dihedral', 8)])
def test_random_patches_draw_each_allowed_symmetry_and_every_offset(augment, count):
  h, w, size = 6, 7, 4
  image = np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1)
  images = np.repeat(image, 64, axis=0)
  # The 8 symmetries of a square, written independently with numpy's rot90 / flips.
  variants = {'id': lambda p: p, 'h': np.fliplr, 'v': np.flipud, 'hv': lambda p: np.rot90(p, 2),
              't': lambda p: p.T, 'r90': np.rot90, 'r270': lambda p: np.rot90(p, 3),
              'anti': lambda p: np.rot90(p, 2).T}
  allowed = {'none': {'id'}, 'hflip': {'id', 'h'}, 'vflip': {'id', 'v'},
             'flips': {'id', 'h', 'v', 'hv'}, 'dihedral': set(variants)}[augment]
  seen_kinds, seen_offsets = set(), set()
  for step in range(40):
    for p in tiling.random_patches(images, size, seed=1, step=step, augment=augment)[..., 0]:
      match = [(name, (r, c)) for name, f in variants.items()
               for r in range(h - size + 1) for c in range(w - size + 1)
               if np.array_equal(p, f(image[0, r:r + size, c:c + size, 0]))]
      assert len(match) == 1
      seen_kinds.add(match[0][0])
      seen_offsets.add(match[0][1])
  assert seen_kinds == allowed and len(allowed) == count
  assert seen_offsets == {(r, c) for r in range(h - size + 1) for c in range(w - size + 1)}
  np.testing.assert_array_equal(tiling.random_patches(images, size, 1, 5, augment),
                                tiling.random_patches(images, size, 1, 5, augment))
  with pytest.raises(ConfigError, match=r"config.data.augment must be one of .*got 'rot45'"):
    tiling.random_patches(images, size, 1, 5, 'rot45')


def test_zoomed_patches_span_the_scales_and_the_image():
  """On a plane x = column, a patch zoomed by s has slope s per pixel, so the slopes are the
  zooms: log-uniform in [1/a, a] (both ends reached), at offsets spread over the whole image,
  the same for the same (seed, step). (Pillow's widened Lanczos filter keeps a plane a plane
  only to a few hundredths of a pixel step when it averages, hence the tolerances.)"""
  h, w, size, zoom = 60, 70, 8, 1.5
  plane = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))[None, ..., None]
  images = np.repeat(plane, 32, axis=0)
  slopes, firsts = [], []
  for step in range(20):
    patches = tiling.random_patches(images, size, seed=2, step=step, zoom=zoom)
    assert patches.shape == (32, size, size, 1) and patches.dtype == np.float32
    inner = patches[:, 2:-2, 1:-1, 0]  # away from where the filter meets the image's border
    steps = np.diff(inner, axis=-1)
    np.testing.assert_allclose(steps, np.broadcast_to(steps.mean(axis=-1, keepdims=True),
                                                      steps.shape), atol=0.15)
    slopes.append(steps.mean(axis=(1, 2)))
    firsts.append(patches[:, size // 2, 0, 0])
  slopes, firsts = np.concatenate(slopes), np.concatenate(firsts)
  assert slopes.min() > 1 / zoom - 0.02 and slopes.max() < zoom + 0.02
  assert slopes.min() < 1 / zoom + 0.05 and slopes.max() > zoom - 0.05
  logs = np.log(slopes) / np.log(zoom)  # uniform in [-1, 1]
  assert abs(logs.mean()) < 0.1 and 0.25 < (np.abs(logs) < 0.5).mean() < 0.75
  assert firsts.min() < 4 and firsts.max() > w - size * zoom - 4
  np.testing.assert_array_equal(tiling.random_patches(images, size, 2, 3, zoom=zoom),
                                tiling.random_patches(images, size, 2, 3, zoom=zoom))


def test_zoom_one_is_the_plain_crop_and_resampling_at_scale_one_is_exact():
  rng = np.random.default_rng(0)
  images = rng.random((5, 20, 24, 3), dtype=np.float32)
  np.testing.assert_array_equal(tiling.random_patches(images, 8, 1, 4, zoom=1.0),
                                tiling.random_patches(images, 8, 1, 4))
  np.testing.assert_allclose(tiling._resample(images[0], 3.0, 5.0, 8.0, 8),
                             images[0, 3:11, 5:13], atol=1e-6)
  # a window twice the patch: each output pixel is a normalised weighted sum of the pixels
  # around its centre (Pillow's Lanczos widened to the scale), so a constant stays a constant
  const = np.full((20, 24, 1), 0.25, np.float32)
  np.testing.assert_allclose(tiling._resample(const, 1.5, 2.5, 16.0, 8), 0.25, atol=1e-6)


@pytest.mark.parametrize('zoom', [0.8, float('nan'), float('inf'), 'big', None])
def test_bad_zoom_is_refused(zoom):
  with pytest.raises(ConfigError, match='config.data.zoom must be a number >= 1'):
    tiling.random_patches(np.zeros((2, 9, 9, 1), np.float32), 4, 0, 0, zoom=zoom)


def test_a_saved_config_without_a_later_field_reads_as_its_old_default():
  from vae_qc import config as config_lib
  saved = {'data': {'patch_size': 32}}
  assert config_lib.changed_fields(saved, {'data': {'patch_size': 32, 'zoom': 1.0}}) == []
  assert config_lib.changed_fields(saved, {'data': {'patch_size': 32, 'zoom': 1.25}}) == [
      'data.zoom']
  assert config_lib.changed_fields(saved, {'data': {'patch_size': 32}}) == []
