"""vae_qc.fusion: which runs may be fused (the figures are checked end to end in
tests/integration/print_patch_test.py)."""
import ml_collections
import pytest

from vae_qc import fusion
from vae_qc.errors import ConfigError


def _config(**data):
  return ml_collections.ConfigDict({
      'data': {'root': 'data/brick_val_l', 'patch_size': 32, 'tile_stride': 16, **data},
      'eval': {'map': 'sq_error_logratio'}})


def test_runs_of_one_data_set_with_other_patch_sizes_may_be_fused():
  fusion.check_runs([_config(), _config(patch_size=16, tile_stride=8)], ['a', 'b'])


@pytest.mark.parametrize('configs,message', [
    ([_config()], 'fusion needs two runs or more, got 1'),
    ([_config(), _config(root='data/gravel_val_l')],
     r'b was trained on other data than a \(data.root differ\); fuse runs of one data set'),
])
def test_runs_that_cannot_be_fused_are_config_errors(configs, message):
  with pytest.raises(ConfigError, match=message):
    fusion.check_runs(configs, ['a', 'b'][:len(configs)])


def test_maps_in_other_units_are_a_config_error():
  other = _config()
  other.eval.map = 'nll'
  with pytest.raises(ConfigError, match="b maps 'nll', a 'sq_error_logratio': fused maps must"):
    fusion.check_runs([_config(), other], ['a', 'b'])
