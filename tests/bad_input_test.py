"""Bad inputs: each kind gives one clear error (what, where, what to do) or a documented,
counted skip. The catalogue, with the test of each kind (``here`` = this file):

Image files (folder reader; ``on_bad_image='error'`` lists every bad file with its reason in
one DataError, ``'skip'`` leaves them out and lists them in ``ImageSet.skipped``):
   1. corrupt bytes ............... folder_test::test_bad_files_error_lists_all_and_skip_counts
   2. truncated image ............. same, and test_read_image_bad_file_names_it[truncated.png]
   3. zero-byte file .............. same [empty.png]
   4. content not matching the extension (JPEG named .png) ... same [jpeg_named.png]
   5. unsupported extension (.txt) ............................ same [notes.txt]
   6. 32-bit integer / float TIFF (unsupported depth) ......... same [int32.tif, float.tif]
   7. 16-bit gray and colour PNG (read, scaled) ... folder_test::test_read_16bit_*
   8. palette, alpha, LA, RGBA (expanded / alpha dropped) ..... test_read_every_format_mode_*
   9. random damage of valid files (hypothesis) ... folder_test::test_reader_raises_only_data_error
  10. unreadable image file (permissions) ........ here: test_unreadable_image_file_*
Folders and masks:
  11. mask without an image ...................... folder_test::test_mask_without_image
  12. mask of the wrong size ..................... folder_test::test_wrong_size_mask
  13. two masks for one image, mask folder without image folder ... folder_test
  14. empty or missing folder, wrong MVTec layout . folder_test::test_empty_and_missing_folders
  15. unreadable folder (chmod 000) .............. here: test_unreadable_folder
  16. NaN / inf in training images, wrong image shape for the model ... here
MNIST sources: bad IDX magic, wrong size, missing folder, TFDS not prepared (mnist_test)
  17. anomalous digit outside 0-9 ................ mnist_test::test_digit_out_of_range; CLI:
      integration/mnist_study_test::test_cli_digit_out_of_range
Config:
  18. unknown field (lists the valid ones) ....... here (apply_overrides); CLI:
      integration/mnist_study_test::test_cli_unknown_field_lists_valid_ones
  19. wrong type, unparsable value, section set to a value ... here (apply_overrides)
  20. wrong element type on the command line ((8, 'a') for blocks) ... here: test_cli_*
  21. any override at all (hypothesis) raises only VaeQcError ... here: property test
  22. out-of-range values: K <= 0 for scores, unknown score, nan_policy, batch size, learning
      rate ... here; unknown data source: mnist_test::test_unknown_source; estimators with
      K <= 0 or chunk <= 0 raise EstimatorError: estimators_test::test_bad_arguments_raise
  23. batch size not divisible by the devices .... here (CLI, 2 CPU devices);
      parallel_test::test_indivisible_batch_is_a_clear_error
Workdir and checkpoints:
  24. workdir on a read-only path, or a file; metrics.jsonl that cannot be appended ... here
  25. resumed with a config that differs ......... reliability_test::test_cli_resume_with_*
  26. disk full during a checkpoint save ......... reliability_test::test_disk_full_on_*
  27. damaged checkpoint; checkpoint of another model ... reliability_test
  28. torn metrics.jsonl line; damaged config.json ... reliability_test, kill_resume_test
  29. NaN / inf loss during training ............. reliability_test::test_nan_stop_*

Permissions: the tests run as root, who ignores permission bits, so there the unreadable
files and folders are simulated by making the OS call that reads them raise PermissionError
(what it raises for other users); as another user they are real (chmod 000).
"""
import errno
import math
import os
import pathlib
import subprocess
import sys

from hypothesis import example, given, settings
from hypothesis import strategies as st
import numpy as np
from PIL import Image
import pytest

import experiments.configs.mnist as mnist_config
from tests.conftest import tiny_mnist_overrides
from tests.conftest import xla_env
from vae_qc import config as config_lib
from vae_qc import evaluate
from vae_qc import models
from vae_qc import predict
from vae_qc import train as train_lib
from vae_qc import workdir as wd
from vae_qc.data import folder
from vae_qc.errors import ConfigError, DataError, VaeQcError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_ROOT = os.geteuid() == 0


def _cli(*args, env=None):
  """experiments/mnist_anomaly.py with tiny overrides; (returncode, stderr)."""
  tiny = dict(tiny_mnist_overrides(), **{'data.source': 'bundled'})
  overrides = [f'--config.{k}={v!r}' if isinstance(v, tuple) else f'--config.{k}={v}'
               for k, v in tiny.items()]
  p = subprocess.run([sys.executable, 'experiments/mnist_anomaly.py',
                      '--config=experiments/configs/mnist.py', *overrides, *args],
                     cwd=ROOT, capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **(env or {})))
  return p.returncode, p.stderr


def _one_error_line(stderr):
  lines = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in stderr, stderr[-3000:]
  return lines[0]


# ------------------------------------------------------------------------------ permissions
def _make_unreadable(path: pathlib.Path, monkeypatch, request):
  """chmod 000 (real) for a normal user; as root, the reading call raises PermissionError."""
  if not IS_ROOT:
    os.chmod(path, 0)
    request.addfinalizer(lambda: os.chmod(path, 0o755))
    return
  denied = PermissionError(errno.EACCES, 'Permission denied', str(path))
  if path.is_dir():
    iterdir = pathlib.Path.iterdir

    def guarded_iterdir(self):
      if self == path:
        raise denied
      return iterdir(self)
    monkeypatch.setattr(pathlib.Path, 'iterdir', guarded_iterdir)
  else:
    image_open = folder.Image.open

    def guarded_open(fp, *args, **kwargs):
      if pathlib.Path(fp) == path:
        raise denied
      return image_open(fp, *args, **kwargs)
    monkeypatch.setattr(folder.Image, 'open', guarded_open)


def _gray(path, size=6):
  Image.fromarray(np.full((size, size), 100, np.uint8)).save(path)


def test_unreadable_folder(tmp_path, monkeypatch, request):
  for split in ('train/good', 'normal'):
    (tmp_path / split).mkdir(parents=True)
    _gray(tmp_path / split / 'a.png')
  _make_unreadable(tmp_path / 'normal', monkeypatch, request)
  with pytest.raises(DataError, match=r'cannot list folder .*normal: Permission denied\. '
                                      r'Check that it is readable \(permissions\)'):
    folder.load_dirs(tmp_path / 'normal', channels=1)
  monkeypatch.undo()
  _make_unreadable(tmp_path / 'train' / 'good', monkeypatch, request)
  with pytest.raises(DataError, match=r'cannot list folder .*train/good: Permission denied'):
    folder.load_mvtec(tmp_path, 'train', 1)
  monkeypatch.undo()
  (tmp_path / 'test' / 'good').mkdir(parents=True)
  _gray(tmp_path / 'test' / 'good' / 'a.png')
  _make_unreadable(tmp_path / 'test', monkeypatch, request)
  with pytest.raises(DataError, match=r'cannot list folder .*test: Permission denied'):
    folder.load_mvtec(tmp_path, 'test', 1)


def test_unreadable_image_file_is_a_listed_or_counted_bad_file(tmp_path, monkeypatch, request):
  for name in ('a.png', 'b.png', 'c.png'):
    _gray(tmp_path / name)
  _make_unreadable(tmp_path / 'b.png', monkeypatch, request)
  with pytest.raises(DataError) as error:
    folder.load_dirs(tmp_path, channels=1)
  assert f'{tmp_path / "b.png"}: permission denied (check the file permissions)' in str(
      error.value)
  data = folder.load_dirs(tmp_path, channels=1, on_bad_image='skip')
  assert len(data) == 2 and [pathlib.Path(p).name for p, _ in data.skipped] == ['b.png']
  with pytest.raises(DataError, match='b.png: permission denied'):
    folder.read_image(tmp_path / 'b.png', 1)


def test_a_broken_link_is_a_listed_bad_file_not_a_silent_gap(tmp_path):
  """A link to a photo that was moved: listed as skipped (or named, on 'error') by the folder
  loaders and by predict's listing, never dropped without a word."""
  for name in ('a.png', 'c.png'):
    _gray(tmp_path / name)
  os.symlink(tmp_path / 'moved' / 'b.png', tmp_path / 'b.png')
  with pytest.raises(DataError, match=r'b\.png: a broken link \(its target .*moved/b\.png does '
                                      r'not exist\)'):
    folder.load_dirs(tmp_path, channels=1)
  data = folder.load_dirs(tmp_path, channels=1, on_bad_image='skip')
  assert len(data) == 2 and [pathlib.Path(p).name for p, _ in data.skipped] == ['b.png']
  (tmp_path / 'notes.txt').write_text('lot 7')  # other files: ignored, and said so
  _gray(tmp_path / '._a.png')  # a hidden file (an archiver's): not an image of the set
  assert [p.name for p in predict.list_images(str(tmp_path))] == ['a.png', 'b.png', 'c.png']
  only_text = tmp_path / 'text'
  only_text.mkdir()
  (only_text / 'notes.txt').write_text('lot 7')
  with pytest.raises(DataError, match=r'no images \(.png, .*\) under .*text \(1 other files, '
                                      r'e\.g\. notes\.txt\)\.$'):
    predict.list_images(str(only_text))


# --------------------------------------------------------------------------- image contents
def test_non_finite_training_images():
  images = np.zeros((6, 28, 28, 1), np.float32)
  images[2, 0, 0, 0] = np.nan
  images[4, 5, 5, 0] = np.inf
  with pytest.raises(DataError, match=r'training images: 2 images contain NaN or inf '
                                      r'\(indices \[2, 4\]\); drop or repair them'):
    evaluate.check_images(images, (28, 28, 1), 'training images')


def test_images_of_the_wrong_shape_for_the_model():
  with pytest.raises(DataError, match=r'have shape \(3, 32, 32, 1\); the model needs '
                                      r'\[N, 28, 28, 1\]'):
    evaluate.check_images(np.zeros((3, 32, 32, 1), np.float32), (28, 28, 1))


# ---------------------------------------------------------------------------------- config
def _config():
  return mnist_config.get_config()


def test_unknown_field_lists_the_valid_ones():
  with pytest.raises(ConfigError, match=r"unknown config field 'config\.train\.epoch': "
                                        r'config\.train has no field .epoch.\. Valid fields of '
                                        r'config\.train: batch_size, .*epochs'):
    config_lib.apply_overrides(_config(), {'train.epoch': 3})
  with pytest.raises(ConfigError, match=r'config\.seed is a value, not a section'):
    config_lib.apply_overrides(_config(), {'seed.value': 3})


@pytest.mark.parametrize('path, value, match', [
    ('train.epochs', 'ten', r"config\.train\.epochs: cannot read 'ten' as an integer \(like 50\)"),
    ('train.epochs', 2.5, r'must be an integer \(like 50\), got float 2\.5'),
    ('train.epochs', True, r'must be an integer \(like 50\), got bool True'),
    ('train.learning_rate', 'fast', r'cannot read .fast. as a number'),
    ('train.learning_rate', None, r'must be a number \(like 0\.001\), got NoneType None'),
    ('data.allow_download', 1, r'must be a bool \(True or False\)'),
    ('data.source', 3, r'must be a string'),
    ('model.blocks', 8, r'must be a tuple of integers \(like \(32, 64\)\), got int 8'),
    ('model.blocks', "(8, 'a')", r"must be a tuple of integers .*got tuple \(8, 'a'\)"),
    ('eval.scores', ('neg_elbo', 3), r'must be a tuple of strings'),
    ('train', 5, r'config\.train is a section, not a value: set its fields instead, e\.g\. '
                 r'config\.train\.batch_size'),
    ('train.epochs', '-' * 20000 + '1', r'cannot read .* as an integer'),  # RecursionError
    ('train.epochs', '9' * 5000, r"cannot read '9999.* \.\.\.' as an integer"),  # kept short
    (3, 1, r'config field names are dotted strings'),
])
def test_wrong_values_are_one_clear_config_error(path, value, match):
  with pytest.raises(ConfigError, match=match) as error:
    config_lib.apply_overrides(_config(), {path: value})
  assert len(str(error.value)) < 400 and '\n' not in str(error.value)


def test_well_typed_overrides_are_converted():
  config = config_lib.apply_overrides(_config(), {
      'train.learning_rate': 1, 'model.blocks': [8, 16], 'model.latent': '4',
      'eval.scores': "('kl',)", 'data.source': 'bundled'})
  assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
  assert config.model.blocks == (8, 16) and config.model.latent == 4
  assert config.eval.scores == ('kl',) and config.data.source == 'bundled'


def _shipped(name):
  return config_lib.load_file(os.path.join(ROOT, 'experiments', 'configs', f'{name}.py'))


def _changes(config, base) -> dict:
  """The flattened fields of ``config`` that ``base`` lacks or holds with another value."""
  a, b = config_lib.flatten(config_lib.to_dict(config)), config_lib.flatten(
      config_lib.to_dict(base))
  return {k: v for k, v in a.items() if k not in b or b[k] != v}


def test_shipped_configs_are_the_default_with_their_documented_changes():
  default = _shipped('default')
  names = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, 'experiments', 'configs'))
                 if n.endswith('.py') and not n.startswith('_'))
  assert names == ['default', 'mnist', 'mnist_recipe', 'print', 'print_cpu']
  for name in names:  # shared sections keep the default's types, element types included
    config_lib.check_types(_shipped(name), default)
  mnist = _changes(_shipped('mnist'), default)
  assert {k: v for k, v in mnist.items() if not k.startswith('data.')} == {
      'threshold.val_source': 'test'}
  assert mnist['data.name'] == 'mnist' and mnist['data.source'] == 'auto'
  assert mnist['data.anomalous_digit'] == 0 and mnist['data.allow_download'] is False
  assert _changes(_shipped('mnist_recipe'), _shipped('mnist')) == {
      'model.likelihood': 'bernoulli', 'model.latent': 32,
      'eval.scores': ['latent_nll', 'neg_elbo', 'neg_log_px', 'recon_error', 'kl',
                      'neg_elbo_plus_latent'],
      'eval.latent_components': 20, 'eval.log_px_samples': 128}
  printed = _changes(_shipped('print'), default)
  assert {k: v for k, v in printed.items() if not k.startswith('data.')} == {
      'model.blocks': [16, 32, 64, 128], 'model.fc': 128, 'model.latent': 64,
      'train.epochs': 200, 'train.batch_size': 32, 'train.log_every_steps': 20,
      'train.checkpoint_every_steps': 200, 'eval.scores': ['neg_elbo', 'recon_error', 'kl'],
      'eval.chunk_size': 8, 'eval.batch_size': 16, 'eval.num_plot_images': 4}
  assert printed['data.image_size'] == 224 and printed['data.generate.size'] == 224
  assert _changes(_shipped('print_cpu'), _shipped('print')) == {
      'data.image_size': 0, 'data.max_period': 16.0, 'data.patch_size': 32,
      'data.tile_stride': 16, 'data.scales': [[16, 8]],
      'model.blocks': [32, 64, 64], 'model.latent': 16, 'model.sigma': 0.1,
      'train.steps': 10560, 'train.epochs': 0, 'train.time_budget_s': 750.0,
      'train.learning_rate': 2e-3,
      'train.lr_schedule': 'cosine',
      'train.log_every_steps': 50, 'train.checkpoint_every_steps': 500,
      'eval.scores': ['map_topk_logratio', 'map_max_logratio', 'map_max_excess', 'map_max',
                      'map_topk', 'neg_elbo'],
      'eval.map': 'cal_error_logratio', 'eval.map_contrast_window': 31,
      'eval.map_post_sigma': 8.0, 'eval.map_position': True, 'eval.map_level': True,
      'eval.elbo_samples': 4,
      'eval.map_samples': 4, 'eval.map_antithetic': True, 'eval.batch_size': 256}


def test_cli_wrong_element_type_is_one_line(tmp_path):
  # ml_collections checks the top-level type only; cli.flags_parser checks the rest.
  code, stderr = _cli(f'--workdir={tmp_path / "run"}', "--config.model.blocks=(8,'a')")
  assert code == 2
  line = _one_error_line(stderr)
  assert "config.model.blocks must be a tuple of integers (like (32, 64)), got tuple (8, 'a')" \
      in line
  assert not (tmp_path / 'run').exists()  # nothing was started


def test_cli_batch_not_divisible_by_the_devices(tmp_path):
  code, stderr = _cli(f'--workdir={tmp_path / "run"}', '--config.train.batch_size=63',
                      env={'XLA_FLAGS': xla_env(2)['XLA_FLAGS']})
  assert code == 2
  line = _one_error_line(stderr)
  assert 'config.train.batch_size=63 is not divisible by the number of devices (2)' in line
  assert 'a multiple of 2' in line  # what to do


def test_out_of_range_values(tmp_path, tiny_images):
  with pytest.raises(ConfigError, match=r'config\.eval\.elbo_samples must be >= 1, got 0'):
    evaluate.EvalSettings.from_config(
        config_lib.apply_overrides(_config(), {'eval.elbo_samples': 0}).eval)
  with pytest.raises(ConfigError, match=r'config\.eval\.log_px_samples must be >= 1, got -5'):
    evaluate.EvalSettings.from_config(
        config_lib.apply_overrides(_config(), {'eval.log_px_samples': -5}).eval)
  with pytest.raises(ConfigError, match=r'unknown score\(s\) nope .*registered: .*neg_elbo'):
    evaluate.EvalSettings.from_config(
        config_lib.apply_overrides(_config(), {'eval.scores': ('nope',)}).eval)
  tiny = models.ModelConfig(image_shape=(8, 8, 1), blocks=(4,), fc=8, latent=2)
  for field, value, match in (
      ('nan_policy', 'ignore', r"nan_policy must be 'stop' or 'skip', got 'ignore'"),
      ('batch_size', 0, r'batch_size=0 must be between 1 and the number of training images'),
      ('batch_size', 65, r'batch_size=65 must be between 1 and .* \(64\)'),
      ('learning_rate', 0.0, r'learning_rate must be > 0, got 0\.0'),
      ('learning_rate', math.nan, r'learning_rate must be > 0, got nan')):
    config = config_lib.apply_overrides(_config(), {'train.batch_size': 16,
                                                   f'train.{field}': value})
    with pytest.raises(ConfigError, match=match):  # before anything is compiled or written
      train_lib.train(config, str(tmp_path / 'never'), tiny_images, tiny)
  assert not (tmp_path / 'never').exists()


# --------------------------------------------------------------------- hypothesis: overrides
_VALID = sorted(config_lib.flatten(config_lib.to_dict(mnist_config.get_config())))
_SECTIONS = sorted({p.split('.')[0] for p in _VALID if '.' in p})
_NASTY = ['-' * 20000 + '1', '(' * 300, '[' * 300 + ']' * 300, '\x00', '9' * 5000, "(8, 'a')",
          '[1, 2]', "{'a': 1}", 'True', 'None', '1e999', 'nan', '0x10', '1_000', "b'x'", '...',
          '__import__("os")', '()', '(8,)', "('kl',)", '', ' ', '\udcff', '-1', '1.5']
_segments = st.one_of(st.sampled_from(_SECTIONS + ['x', '', 'keys', 'items', 'to_dict',
                                                   '__class__', 'epochs', 'blocks']),
                      st.text(max_size=6))
_paths = st.one_of(
    st.sampled_from(_VALID), st.sampled_from(_SECTIONS),
    st.lists(_segments, min_size=1, max_size=4).map('.'.join),
    st.tuples(st.sampled_from(_VALID), _segments).map('.'.join),
    st.integers(), st.none(), st.tuples(st.text(max_size=3)))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.text(max_size=12), st.sampled_from(_NASTY), st.binary(max_size=4))
_values = st.recursive(_scalars, lambda c: st.one_of(
    st.lists(c, max_size=3), st.tuples(c, c), st.dictionaries(st.text(max_size=4), c,
                                                              max_size=2)), max_leaves=5)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(_paths, _values, max_size=4))
@example({'train.epochs': '-' * 20000 + '1'})
@example({'model.blocks': [True]})
@example({'train': {'epochs': 3}})
@example({'eval.scores': ('kl', None)})
def test_apply_overrides_raises_only_vae_qc_errors(overrides):
  config = mnist_config.get_config()
  before = config.to_json()
  try:
    result = config_lib.apply_overrides(config, overrides)
  except VaeQcError as e:
    assert str(e) and len(str(e)) < 2000
  else:
    config_lib.check_types(result, mnist_config.get_config())  # every value has its type
    for path in overrides:
      assert path in _VALID
  assert config.to_json() == before  # the input is never changed


# ------------------------------------------------------------------------------- workdirs
def test_workdir_is_a_file(tmp_path):
  (tmp_path / 'results').write_text('not a folder')
  with pytest.raises(VaeQcError, match=r"cannot create workdir .*results.*File exists.*\. "
                                       r'Choose a writable --workdir'):
    train_lib.prepare_workdir(str(tmp_path / 'results'), _config())
  with pytest.raises(VaeQcError, match=r'Not a directory.*\. Choose a writable --workdir'):
    train_lib.prepare_workdir(str(tmp_path / 'results' / 'run'), _config())


def test_workdir_on_a_read_only_path(tmp_path, monkeypatch, request):
  parent = tmp_path / 'readonly'
  parent.mkdir()
  existing = parent / 'existing'
  existing.mkdir()
  if not IS_ROOT:  # real: a folder without write permission
    os.chmod(existing, 0o555)
    os.chmod(parent, 0o555)
    request.addfinalizer(lambda: (os.chmod(parent, 0o755), os.chmod(existing, 0o755)))
  else:  # root may write anywhere: the calls that write raise what a read-only mount gives
    mkdir, mkstemp = os.mkdir, wd.tempfile.mkstemp

    def ro_mkdir(path, *args, **kwargs):  # os.makedirs and pathlib go through os.mkdir
      if str(path).startswith(str(parent)):
        raise OSError(errno.EEXIST if os.path.exists(path) else errno.EROFS,
                      'Read-only file system', str(path))
      return mkdir(path, *args, **kwargs)

    def ro_mkstemp(*args, dir=None, **kwargs):  # pylint: disable=redefined-builtin
      if str(dir).startswith(str(parent)):
        raise OSError(errno.EROFS, 'Read-only file system')
      return mkstemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(os, 'mkdir', ro_mkdir)
    monkeypatch.setattr(wd.tempfile, 'mkstemp', ro_mkstemp)
  # A new workdir under the read-only folder cannot be created.
  with pytest.raises(VaeQcError, match=r"cannot create workdir '.*readonly/new': .*\. Choose a "
                                       r'writable --workdir'):
    train_lib.prepare_workdir(str(parent / 'new'), _config())
  # An existing read-only workdir: its config.json cannot be written.
  with pytest.raises(VaeQcError, match=r'cannot write .*existing/config\.json: .*\. Choose a '
                                       r'writable --workdir'):
    train_lib.prepare_workdir(str(existing), _config())
  # The checkpoint folder of a read-only workdir.
  with pytest.raises(VaeQcError, match=r'cannot create checkpoints in .*existing/checkpoints'):
    train_lib.checkpoint_manager(str(existing / 'checkpoints'), _config().train)


def test_metrics_file_that_cannot_be_appended(tmp_path):
  (tmp_path / 'metrics.jsonl').mkdir()  # e.g. replaced by a folder; any OSError alike
  with pytest.raises(VaeQcError, match=r'cannot append to .*metrics\.jsonl: .*re-run the '
                                       r'same command'):
    wd.append_jsonl(str(tmp_path / 'metrics.jsonl'), {'step': 1})
