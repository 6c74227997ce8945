"""Tests of the photographed-texture defect set: disjoint regions, exact masks, layout."""
import json

import numpy as np
from PIL import Image
import pytest

from vae_qc.data import folder
from vae_qc.data import photo_defects as pd
from vae_qc.errors import ConfigError, DataError


def test_regions_are_disjoint_and_cover_the_photo():
  photo = pd.load_photo('brick')
  bands = [pd.region(photo, name) for name in ('train', 'validation', 'test')]
  assert sum(b.shape[0] for b in bands) == photo.shape[0]
  np.testing.assert_array_equal(np.concatenate(bands), photo)


@pytest.mark.parametrize('kind', pd.DEFECT_KINDS)
def test_defect_changes_only_its_mask_and_is_bounded(kind):
  band = pd.region(pd.load_photo('gravel'), 'test')
  for i in range(3):
    rng = np.random.default_rng([0, i])
    good = pd.random_crop(rng, band, 96)
    image, mask = pd.make_defect(rng, kind, good, band)
    assert image.shape == good.shape == mask.shape and mask.dtype == bool
    assert pd.MIN_DEFECT_AREA <= mask.mean() <= pd.MAX_DEFECT_AREA
    np.testing.assert_array_equal(image[~mask], good[~mask])  # exact mask
    assert np.abs(image[mask] - good[mask]).mean() > 0.01  # the defect is visible
    assert 0 <= image.min() and image.max() <= 1


def test_write_dataset_layout_is_read_by_the_folder_reader(tmp_path):
  summary = pd.write_dataset(tmp_path / 'd', 'brick', 'validation', size=64, n_train=5,
                             n_test_good=3, n_test_defect=2, defects=('hole', 'patch'))
  assert json.loads((tmp_path / 'd' / 'photo_defects.json').read_text())['photo'] == 'brick'
  assert set(summary['mask_area']) == set(summary['mean_change']) == {'hole', 'patch'}
  assert summary['disjoint_crops'] == {'train': 4 * 8, 'test': 2 * 8}  # 256 and 128 rows of 512
  rows = (tmp_path / 'd' / 'crops.csv').read_text().splitlines()
  assert rows[0] == 'split,id,kind,row,col,mask_area,mean_change'
  assert len(rows) == 1 + 5 + 3 + 2 * 2  # every image written
  photo = np.round(pd.load_photo('brick') * 255)
  for row in rows[1:]:  # each names an image on disk, where it was cut and what its defect is
    split, image_id, kind, r, c, area, change = row.split(',')
    image = np.asarray(Image.open(tmp_path / 'd' / split / image_id), np.float64)
    cut = photo[int(r):int(r) + 64, int(c):int(c) + 64]
    band = 'train' if split == 'train' else 'validation'
    assert pd.REGIONS[band][0] * 512 <= int(r) <= pd.REGIONS[band][1] * 512 - 64
    assert image_id.startswith(kind + '/')
    if kind == 'good':
      np.testing.assert_array_equal(image, cut)
      assert area == change == ''
      continue
    mask = np.asarray(Image.open(tmp_path / 'd' / 'ground_truth' / kind /
                                 image_id.split('/')[1].replace('.png', '_mask.png'))) > 0
    np.testing.assert_array_equal(image[~mask], cut[~mask])  # the crop outside its defect
    assert float(area) == pytest.approx(mask.mean(), abs=1e-6)
    assert float(change) == pytest.approx(np.abs(image - cut)[mask].mean(), abs=1e-3)
  test = folder.load_mvtec(str(tmp_path / 'd'), 'test', channels=1)
  assert sorted(set(test.defect_types)) == ['good', 'hole', 'patch']
  assert test.has_mask[test.labels == 1].all() and test.masks[test.labels == 1].any()
  first = np.asarray(Image.open(tmp_path / 'd' / 'train' / 'good' / '000.png'))
  again = tmp_path / 'again'
  pd.write_dataset(again, 'brick', 'validation', size=64, n_train=5, n_test_good=3,
                   n_test_defect=2, defects=('hole', 'patch'))
  np.testing.assert_array_equal(first, np.asarray(Image.open(again / 'train' / 'good' /
                                                             '000.png')))  # seeded
  with pytest.raises(DataError, match='already holds a dataset'):
    pd.write_dataset(tmp_path / 'd', 'brick', size=64, n_train=1, n_test_good=1,
                     n_test_defect=1)


def test_visible_change_is_the_mean_8bit_difference_in_the_mask():
  good = np.zeros((4, 4), np.float32)
  image, mask = good.copy(), np.zeros((4, 4), bool)
  image[:2], mask[:2] = 0.5, True  # 127.5 rounds to 128 grey levels
  image[3, 3] = 1.0  # outside the mask: not counted
  assert pd.visible_change(good, image, mask) == 128.0
  mask[2] = True  # unchanged pixels inside the mask dilute it
  assert pd.visible_change(good, image, mask) == pytest.approx(128 * 8 / 12)


def test_bad_arguments():
  with pytest.raises(ConfigError, match='unknown photo'):
    pd.load_photo('marble')
  with pytest.raises(ConfigError, match='unknown defect kind'):
    pd.make_defect(np.random.default_rng(0), 'dent', np.zeros((64, 64)), np.zeros((64, 64)))
  with pytest.raises(ConfigError, match="eval_region must be 'validation' or 'test'"):
    pd.write_dataset('/tmp/unused', eval_region='train')


def test_a_photo_of_your_own(tmp_path):
  """--photo takes an image file: colour read as grey, 16-bit scaled, bands cut as for the
  bundled photos; a missing, unreadable or too small photo is refused before anything is
  written."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (200, 120, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'rgb.png')
  grey = np.asarray(Image.fromarray(rgb).convert('L'), np.float32) / 255
  np.testing.assert_allclose(pd.load_photo(str(tmp_path / 'rgb.png')), grey)
  deep = rng.integers(0, 65536, (40, 50), dtype=np.uint16)
  Image.fromarray(deep).save(tmp_path / 'deep.png')
  np.testing.assert_allclose(pd.load_photo(str(tmp_path / 'deep.png')), deep / 65535.0,
                             atol=1e-6)
  summary = pd.write_dataset(tmp_path / 'd', str(tmp_path / 'rgb.png'), 'test', size=48,
                             n_train=3, n_test_good=2, n_test_defect=1, defects=('stain',))
  assert summary['photo'] == str(tmp_path / 'rgb.png')
  test = folder.load_mvtec(str(tmp_path / 'd'), 'test', channels=1)
  assert test.images.shape[1:3] == (48, 48) and sorted(set(test.defect_types)) == ['good',
                                                                                    'stain']
  with pytest.raises(ConfigError, match='no such file'):
    pd.load_photo(str(tmp_path / 'none.png'))
  (tmp_path / 'cut.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
  with pytest.raises(DataError, match='cannot read .*cut.png as an image'):
    pd.load_photo(str(tmp_path / 'cut.png'))
  before = sorted(p.name for p in (tmp_path / 'd' / 'train' / 'good').iterdir())
  with pytest.raises(ConfigError, match='crops of 64 px do not fit the test band'):
    pd.write_dataset(tmp_path / 'd', str(tmp_path / 'rgb.png'), 'test', size=64,
                     overwrite=True)  # the test band is 50 rows
  assert sorted(p.name for p in (tmp_path / 'd' / 'train' / 'good').iterdir()) == before
