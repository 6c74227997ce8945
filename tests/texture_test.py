"""The texture period and the resampling to a recipe's scale (vae_qc.data.texture)."""
import numpy as np
from PIL import Image
import pytest

from vae_qc.data import texture
from vae_qc.errors import ConfigError


def _grating(period, angle, size=224, seed=0):
  """[size, size, 1] sinusoidal lines of ``period`` px at ``angle`` rad, a lighting gradient
  and a little noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size, :size] / 1.0
  u = x * np.cos(angle) + y * np.sin(angle)
  image = 0.5 + 0.3 * np.sin(2 * np.pi * u / period + rng.uniform(0, 6.3))
  image += 0.1 * x / size + rng.normal(0, 0.01, image.shape)
  return image[..., None].astype(np.float32)


@pytest.mark.parametrize('period', [4.0, 7.0, 12.0, 20.0])
def test_the_period_of_lines_is_their_pitch_at_any_angle(period):
  images = np.stack([_grating(period, a, seed=i) for i, a in enumerate([0.0, 0.4, 1.2, 2.0])])
  assert texture.period(images) == pytest.approx(period, rel=0.15)


def test_the_period_grows_with_the_image_as_a_closer_camera_sees_it():
  rng = np.random.default_rng(3)
  noise = rng.normal(size=(64, 64)).astype(np.float32)  # a stochastic texture: smooth grain
  grain = np.asarray(Image.fromarray(noise, 'F').resize((256, 256), Image.Resampling.BICUBIC))
  near = np.asarray(Image.fromarray(grain, 'F').resize((512, 512), Image.Resampling.BICUBIC))
  p1, p2 = texture.period(grain[None, ..., None]), texture.period(near[None, ..., None])
  assert p2 / p1 == pytest.approx(2.0, rel=0.2)


def test_flat_images_have_no_period():
  assert texture.period(np.full((2, 32, 32, 1), 0.5, np.float32)) == 0.0
  with pytest.raises(ValueError):
    texture.period(np.zeros((0, 32, 32, 1)))


def test_the_factor_only_ever_reduces():
  assert texture.scale_for(30.0, 15.0) == pytest.approx(0.5)
  assert texture.scale_for(10.0, 15.0) == 1.0
  assert texture.scale_for(30.0, 0.0) == 1.0  # off


@pytest.mark.parametrize('bad', [-1, float('nan'), float('inf'), 'big', None])
def test_a_bad_max_period_is_a_config_error(bad):
  with pytest.raises(ConfigError, match='config.data.max_period must be a number of pixels'):
    texture.check_max_period(bad)


def test_resampling_filters_what_it_reduces():
  image = np.zeros((8, 8, 2), np.float32)
  image[:, ::2, 0] = 1.0  # one-pixel columns: their mean, 0.5, when halved (no aliasing)
  image[..., 1] = 0.25
  half = texture.resample(image, 0.5)
  assert half.shape == (4, 4, 2) and half.dtype == np.float32
  np.testing.assert_allclose(half[:, 1:3, 0], 0.5, atol=1e-6)  # the border's tent is cut
  np.testing.assert_allclose(half[..., 1], 0.25, atol=1e-6)
  assert texture.resample(image, 1.0) is image
  both = texture.resample_all(np.stack([image, image]), 0.5)
  assert both.shape == (2, 4, 4, 2)
  assert [a.shape for a in texture.resample_all([image, image[:6]], 0.5)] == [(4, 4, 2),
                                                                             (3, 4, 2)]


def test_a_mask_keeps_the_pixels_at_least_half_defect():
  mask = np.zeros((8, 8), bool)
  mask[0:2, 0:2] = True  # a whole output pixel
  mask[4, 4:6] = True  # half of one
  mask[6, 6] = True  # a quarter of one
  half = texture.resample_mask(mask, 0.5)
  assert half.shape == (4, 4) and half.dtype == bool
  assert half[0, 0] and half[2, 2] and not half[3, 3] and half.sum() == 2


def test_images_of_several_sizes_share_the_bands_of_the_smallest():
  images = [_grating(8.0, 0.3, size=224), _grating(8.0, 1.0, size=96, seed=1)]
  assert texture.period(images) == pytest.approx(8.0, rel=0.15)
