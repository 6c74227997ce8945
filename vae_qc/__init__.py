"""vae-qc: likelihood-based visual quality control with variational autoencoders.

The API for notebooks and scripts (``vae_qc.api``), imported on first use so that
``import vae_qc.<module>`` does not start JAX (the scripts tune XLA before it starts)::

  import vae_qc
  run = vae_qc.load_run('runs/print')
  result = run.score('my_photos/')
"""
_API = ('Result', 'Run', 'load_run', 'run_study')


def __getattr__(name):
  if name in _API:
    from vae_qc import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_API))
