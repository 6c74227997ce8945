"""Data sources of the studies, behind one :func:`load` returning a :class:`Dataset`."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vae_qc.data import mnist
from vae_qc.errors import ConfigError


@dataclasses.dataclass
class Dataset:
  """A study's arrays. Images float32 [N, H, W, C] in [0, 1]."""
  train_images: np.ndarray  # [N_train, H, W, C], normal only
  test_images: np.ndarray  # [N_test, H, W, C]
  test_labels: np.ndarray  # [N_test] int32, 1 = anomalous
  test_ids: list[str]  # [N_test]
  test_groups: list[str]  # [N_test]: digit or defect type ('good' for normal print images)
  test_masks: np.ndarray | None = None  # [N_test, H, W] bool ground truth (None: no masks)
  test_has_mask: np.ndarray | None = None  # [N_test] bool: pixel metrics may use the image
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  # Selection validation (MNIST): images that choose settings, never part of the test figures.
  val_images: np.ndarray | None = None  # [N_val, H, W, C]
  val_labels: np.ndarray | None = None  # [N_val] int32, 1 = anomalous
  val_ids: list[str] | None = None  # [N_val]
  val_groups: list[str] | None = None  # [N_val]

  def subset(self, idx: np.ndarray) -> 'Dataset':
    """The same dataset with only the test images ``idx``."""
    pick = lambda a: None if a is None else a[idx]
    return dataclasses.replace(
        self, test_images=self.test_images[idx], test_labels=self.test_labels[idx],
        test_ids=[self.test_ids[i] for i in idx], test_groups=[self.test_groups[i] for i in idx],
        test_masks=pick(self.test_masks), test_has_mask=pick(self.test_has_mask))

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def load(data_cfg) -> Dataset:
  """The dataset of ``config.data`` (``name``: 'mnist' or 'print')."""
  if data_cfg.name == 'mnist':
    s = mnist.load(data_cfg)
    return Dataset(s.train_images, s.test_images, s.test_labels, s.test_ids,
                   [str(d) for d in s.test_digits], info=s.info, val_images=s.val_images,
                   val_labels=s.val_labels, val_ids=s.val_ids,
                   val_groups=None if s.val_digits is None else [str(d) for d in s.val_digits])
  if data_cfg.name == 'print':
    # print_study imports Dataset from this package: imported here, not at the top (a cycle).
    from vae_qc.data import print_study  # pylint: disable=g-import-not-at-top
    return print_study.load(data_cfg)
  raise ConfigError(f"config.data.name must be 'mnist' or 'print', got {data_cfg.name!r}.")
