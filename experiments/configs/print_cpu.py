"""Print-image study on a CPU: the paper's architecture on 128×128 generated surfaces with a
short schedule and fewer Monte-Carlo samples (minutes on 2 cores, not hours)."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    '_print_config', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'print.py'))
_print_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_print_config)


def get_config():
  config = _print_config.get_config()
  config.data.image_size = 128
  config.data.generate.size = 128
  config.data.generate.n_train = 400
  config.train.epochs = 15
  config.train.batch_size = 32
  config.eval.elbo_samples = 16
  config.eval.map_samples = 8
  config.eval.batch_size = 32
  return config
