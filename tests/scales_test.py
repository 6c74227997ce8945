"""vae_qc.scales: which further scales a config may ask for, and the mean of their maps."""
import ml_collections
import numpy as np
import pytest

from vae_qc import scales
from vae_qc import scores as scores_lib
from vae_qc.errors import ConfigError


def _config(scales_value, patch_size=32, arch='global'):
  return ml_collections.ConfigDict({'data': {'patch_size': patch_size, 'tile_stride': 16,
                                             'scales': scales_value},
                                    'model': {'arch': arch}})


def test_parse_gives_pairs_and_a_copy_for_each_scale():
  config = _config(((16, 8), (8, 4)))
  assert scales.parse(config) == ((16, 8), (8, 4))
  assert scales.parse(_config(())) == ()
  sub = scales.scale_config(config, 16, 8)
  assert (sub.data.patch_size, sub.data.tile_stride, sub.data.scales) == (16, 8, ())
  assert config.data.patch_size == 32 and config.data.scales == ((16, 8), (8, 4))
  assert [scales.dirname(p) for p, _ in scales.parse(config)] == ['scale_p16', 'scale_p8']


@pytest.mark.parametrize('config, message', [
    (_config(((16, 8),), patch_size=0), r'set config.data.patch_size > 0 and '
                                        r"config.model.arch='global'"),
    (_config(((16, 8),), arch='spatial'), r"config.model.arch='global'"),
    (_config((16,)), r'entries are \(patch_size, tile_stride\) pairs of ints'),
    (_config(((16, 0),)), r'0 < tile_stride <= patch_size'),
    (_config(((16, 32),)), r'0 < tile_stride <= patch_size'),
    (_config(((16.5, 8),)), r'pairs of ints'),
    (_config(((16, 8, 2),)), r'pairs of ints'),
    (_config(((32, 8),)), r'patch size 32 is there twice \(the main model is 32\)'),
    (_config(((16, 8), (16, 4))), r'patch size 16 is there twice'),
])
def test_bad_scales_are_config_errors(config, message):
  with pytest.raises(ConfigError, match=message):
    scales.parse(config)


def test_mean_maps_average_each_form_of_each_scale():
  """Each form is formed from its own scale's map, then averaged (a log ratio of the mean is
  not the mean of the log ratios); the reconstruction is the main model's."""
  rng = np.random.default_rng(0)
  a = {'sq_error': rng.gamma(2.0, size=(2, 24, 24)), 'reconstruction': rng.random((2, 24, 24, 1))}
  b = {'sq_error': rng.gamma(2.0, size=(2, 24, 24)), 'reconstruction': rng.random((2, 24, 24, 1))}
  forms = [scores_lib.add_smoothed_maps(m, 2.0, 0.5) for m in (a, b)]
  mean = scales.MeanMaps(forms)
  for name in ('sq_error', 'sq_error_smooth', 'sq_error_logratio', 'sq_error_excess'):
    np.testing.assert_allclose(mean[name], (forms[0][name] + forms[1][name]) / 2)
  expected = np.stack([scores_lib.log_ratio(scores_lib.smooth_map(m, 2.0), 0.5)
                       for m in a['sq_error']])
  np.testing.assert_allclose(forms[0]['sq_error_logratio'], expected)
  assert mean['reconstruction'] is a['reconstruction']
  assert set(mean) == set(forms[0]) and len(mean) == len(forms[0])
  with pytest.raises(KeyError):
    mean['nll']


def test_mean_maps_of_images_of_several_sizes_are_lists():
  a = [np.ones((8, 8)), np.ones((8, 12))]
  b = [np.zeros((8, 8)), 3 * np.ones((8, 12))]
  mean = scales.MeanMaps([{'nll': a}, {'nll': b}])['nll']
  assert isinstance(mean, list) and [m.shape for m in mean] == [(8, 8), (8, 12)]
  np.testing.assert_allclose(mean[0], 0.5)
  np.testing.assert_allclose(mean[1], 2.0)


def test_each_scale_trains_on_patches_zoomed_like_the_main_models():
  """A further scale's model draws its patches as the main one does (config.data.zoom,
  augment, seed), only smaller: study._patch_transform of its config."""
  from vae_qc import study
  from vae_qc.data import tiling
  config = ml_collections.ConfigDict({'seed': 3, 'data': {'patch_size': 16, 'tile_stride': 8,
                                                          'scales': ((8, 4),), 'zoom': 1.25,
                                                          'augment': 'none'}})
  images = np.random.default_rng(0).random((4, 24, 24, 1), dtype=np.float32)
  sub = scales.scale_config(config, 8, 4)
  np.testing.assert_array_equal(study._patch_transform(sub)(images, 7),
                                tiling.random_patches(images, 8, 3, 7, zoom=1.25))
  np.testing.assert_array_equal(study._patch_transform(config)(images, 7),
                                tiling.random_patches(images, 16, 3, 7, zoom=1.25))
  assert not np.array_equal(study._patch_transform(sub)(images, 7),
                            tiling.random_patches(images, 8, 3, 7))
