"""vae_qc.cli: config mistakes are one-line errors, overrides are applied (last one wins),
and our errors become exit status 2.

The parser runs in a child process (``_PARSE``): it defines absl's ``--config`` flag as the
study scripts do, which this test process must not (other tests define flags of their own).
No JAX computation runs, so each child takes a few seconds.
"""
import json
import os
import subprocess
import sys

import pytest

from vae_qc import cli
from vae_qc.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PARSE = '''
import json, sys
from absl import flags
from ml_collections import config_flags
from vae_qc import cli, config as config_lib
config = config_flags.DEFINE_config_file('config', None, 'config file')
rest = cli.flags_parser(sys.argv)
print(json.dumps({'rest': rest[1:], 'config': config_lib.to_dict(config.value)}))
'''


def _parse(*args):
  """(exit status, parsed {'rest', 'config'} or None, stderr) of cli.flags_parser."""
  p = subprocess.run([sys.executable, '-c', _PARSE,
                      '--config=experiments/configs/mnist.py', *args],
                     cwd=ROOT, capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT))
  parsed = json.loads(p.stdout.splitlines()[-1]) if p.returncode == 0 else None
  return p.returncode, parsed, p.stderr


def test_overrides_are_applied_and_the_last_one_wins():
  code, parsed, err = _parse('--config.model.latent=32', '--config.model.blocks=(8,)',
                             '--config.model.blocks=(16, 4)', 'positional')
  assert code == 0, err
  assert parsed['config']['model']['latent'] == 32
  assert parsed['config']['model']['blocks'] == [16, 4]  # not (8, 16, 4)
  assert parsed['config']['train']['epochs'] == 50  # untouched fields keep the file's values
  assert parsed['rest'] == ['positional']


def test_unknown_field_is_one_error_line_listing_the_valid_fields():
  code, _, err = _parse('--config.train.epoch=3')
  assert code == 2
  lines = [l for l in err.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in err, err[-2000:]
  assert "config.train.epoch" in lines[0]
  for valid in ('epochs', 'batch_size', 'learning_rate', 'nan_policy'):
    assert valid in lines[0]


def test_wrong_element_type_is_one_error_line():
  code, _, err = _parse("--config.model.blocks=(8,'a')")
  assert code == 2 and 'config.model.blocks' in err and 'Traceback' not in err


def test_last_override_wins_keeps_other_arguments_in_order():
  argv = ['prog', '--config.a=1', '--workdir=w', '--config.b=2', '--config.a=3', 'x']
  assert cli._last_override_wins(argv) == ['prog', '--workdir=w', '--config.b=2',
                                           '--config.a=3', 'x']


def test_run_turns_our_errors_into_exit_status_2(capsys, monkeypatch):
  monkeypatch.setenv('VAE_QC_TUNE_CPU', '0')
  assert cli.run(lambda: 7) == 7

  def fail():
    raise ConfigError('config.x is wrong.')
  with pytest.raises(SystemExit) as exit_info:
    cli.run(fail)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().endswith('error: config.x is wrong.')
  with pytest.raises(ZeroDivisionError):  # other exceptions are not ours to hide
    cli.run(lambda: 1 / 0)
