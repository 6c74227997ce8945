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


def test_stitch_uncovered_pixels():
  with pytest.raises(DataError, match='cover'):
    tiling.stitch(np.zeros((1, 4, 4)), np.array([[0, 0]]), (4, 8))


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
