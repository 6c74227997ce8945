r"""Speed and memory of the VAE on this machine, and of the PyTorch reference side by side.

  python experiments/benchmark.py --arch=mnist --batch=128 --k=100,5000 --threads=1,2 \
      --torch_python=/tmp/tv/bin/python --pairs=3

For each architecture, batch, thread count and K, one JSON line on stdout (progress on
stderr) with:
  - training: one Adam step on −ELBO (``train.compile_train_step``, the step ``train()``
    runs), images/s, compile time, peak RSS, XLA's scratch memory; and the end-to-end
    throughput of the real loop (``train.train()``: batches, prefetch, step, logging) as a
    fraction of the pure step's;
  - importance-sampled log p(x) with K samples through ``estimators.log_px`` and the
    model's ``ModelFns`` (the path of evaluation), images/s, compile time, peak RSS;
  - ``mem``: peak RSS and XLA's scratch memory of log p(x) at the full batch for every K
    (``--mem_check``), and their ratios to the smallest K's (the chunked estimator's
    memory should not grow with K);
  - analytic FLOPs per image (2 × the multiply-adds of the convolutions and dense layers:
    ``model`` counts the architecture as written, as PyTorch computes it; ``executed``
    counts what our sub-pixel decoder computes), the achieved GFLOP/s, and their fraction
    of this machine's float32 matmul peak (the fastest square ``jnp.dot`` of 512, 1024,
    2048, measured in the same processes with the same cores);
  - with ``--torch_python``: the reference (``--torch_script``) run alternately with ours,
    ``--pairs`` times, and the ratios ours / torch pair by pair and their medians.

Every measurement runs in a fresh subprocess pinned to the first ``threads`` cores (0: all),
so peak RSS belongs to that case alone and XLA sizes its thread pool to those cores; torch
gets the same cores and ``--threads``. IS is timed on ``is_batch`` ≤ batch images, chosen
so that one run costs about ``--is_gflop_budget`` GFLOP (K = 5000 at batch 128 would take
minutes a run); the chunk size is ``--chunk_size`` or, by default, ``--chunk_decodes`` //
is_batch samples (decoder batches of about that many images are the fastest here).

On a shared machine, compare medians of several ``--pairs`` and look at ``load_avg``.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from vae_qc import config as config_lib  # ml_collections only: no JAX in the parent
from vae_qc import runtime  # imports no JAX either

# JAX and the modules that use it are imported inside the functions that a measuring child
# process runs (``_run_child``): the parent never starts JAX, and each child applies
# ``vae_qc.runtime.tune_for_cpu()`` before its first JAX import.

_ARCH = flags.DEFINE_list('arch', ['mnist'], 'Architectures: mnist, print.')
_BATCH = flags.DEFINE_list('batch', ['128'], 'Batch sizes.')
_K = flags.DEFINE_list('k', ['100', '5000'], 'Importance samples K of log p(x).')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed runs of the training step (median).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Training steps per timed run.')
_IS_RUNS = flags.DEFINE_integer('is_runs', 3, 'Timed runs of log p(x) (median).')
_E2E_STEPS = flags.DEFINE_integer(
    'e2e_steps', 40, 'Steps of the real train() loop for the end-to-end throughput '
    '(logged every e2e_steps // 4; the first interval, with compilation, is left out).')
_THREADS = flags.DEFINE_list('threads', ['1', '2'],
                             'Cores (and torch threads) per case; 0 = all cores.')
_TORCH_THREADS = flags.DEFINE_list(
    'torch_threads', [], 'Torch threads paired with each --threads value (default: same).')
_IMPL = flags.DEFINE_list('impl', ['subpixel'], 'ModelConfig.upsample_impl values to time.')
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', 0, 'Samples per chunk of log p(x); 0: '
                                   'chunk_decodes // is_batch.')
_CHUNK_DECODES = flags.DEFINE_integer('chunk_decodes', 256,
                                      'Decoder batch (chunk × batch) when --chunk_size=0.')
_IS_GFLOP_BUDGET = flags.DEFINE_float(
    'is_gflop_budget', 1000.0, 'GFLOP of one timed log p(x) run: is_batch = '
    'min(batch, budget / (K × decoder GFLOP)); 0: is_batch = batch.')
_TUNE_CPU = flags.DEFINE_bool(
    'tune_cpu', True, 'vae_qc.runtime.tune_for_cpu() in our processes (host allocator, '
    'multi-threaded convolutions); false: JAX as installed.')
_TORCH_PYTHON = flags.DEFINE_string('torch_python', '', 'Python with torch; empty: no torch.')
_TORCH_SCRIPT = flags.DEFINE_string(
    'torch_script', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 'torch_reference.py'),
    'The PyTorch reference script (experiments/torch_reference.py).')
_TORCH_FLAGS = flags.DEFINE_string('torch_flags', '--channels_last',
                                   "Extra flags of the reference (its fastest settings).")
_TORCH_CHUNK_DECODES = flags.DEFINE_integer(
    'torch_chunk_decodes', 1280, "The reference's --k_chunk is this // its batch (1280: "
    '--k_chunk 10 at batch 128, its fastest); 0: no --k_chunk (all K at once).')
_PAIRS = flags.DEFINE_integer('pairs', 1, 'Alternating ours/torch repetitions of each case.')
_MEM_CHECK = flags.DEFINE_bool(
    'mem_check', True, 'Also run log p(x) once at the full batch for every K (all cores) for '
    'its peak memory (K = 5000 at batch 128 takes minutes).')
_CHILD = flags.DEFINE_string('child', '', 'Internal: run one measurement (JSON spec).')

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARCHS = {  # as experiments/torch_reference.py
    'mnist': dict(image_shape=(28, 28, 1), blocks=(32, 64), fc=64, latent=32),
    'print': dict(image_shape=(224, 224, 1), blocks=(16, 32, 64, 128), fc=128, latent=64),
}


# ------------------------------------------------------------------------------------ FLOPs
def macs_per_image(image_shape, blocks, fc, latent, subpixel: bool = False) -> dict[str, int]:
  """Multiply-adds of one forward pass per image: {'encoder', 'decoder', 'first_conv'}.

  Convolutions and dense layers only (bias, ReLU, BN, pooling and the likelihood are
  element-wise and negligible). ``subpixel``: the decoder's up-sampling convolutions as
  four 2×2 phase convolutions on the small image (16/36 of the plain form's).
  """
  h, w, c = image_shape
  enc, cin, s_h, s_w = 0, c, h, w
  first = h * w * 9 * c * blocks[0]
  for f in blocks:
    enc += s_h * s_w * 9 * cin * f
    cin, s_h, s_w = f, s_h // 2, s_w // 2
  flat = s_h * s_w * blocks[-1]
  enc += flat * fc + fc * 2 * latent
  dec = latent * fc + fc * flat
  cin = blocks[-1]
  for f in reversed(blocks):
    taps = 16 if subpixel else 36  # per small-image pixel: 4 phases × 4 taps, or 4 × 9
    dec += s_h * s_w * taps * cin * f
    cin, s_h, s_w = f, s_h * 2, s_w * 2
  dec += h * w * 9 * cin * c
  return dict(encoder=enc, decoder=dec, first_conv=first)


def flops_per_image(arch: str, k: int, subpixel: bool) -> dict[str, float]:
  """FLOPs (2 × multiply-adds) per image of a training step and of log p(x) with K samples.

  Training: forward + backward, the backward being 2× the forward (input and weight
  gradients) but for the first convolution's input gradient, which is not needed.
  """
  m = macs_per_image(**ARCHS[arch], subpixel=subpixel)
  fwd = m['encoder'] + m['decoder']
  return dict(train=2.0 * (3 * fwd - m['first_conv']),
              log_px=2.0 * (m['encoder'] + k * m['decoder']),
              decoder=2.0 * m['decoder'])


# --------------------------------------------------------------------------- child process
def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _xla_memory_mb(compiled) -> dict[str, float]:
  try:
    m = compiled.memory_analysis()
    return dict(temp=m.temp_size_in_bytes / 2**20, arguments=m.argument_size_in_bytes / 2**20,
                outputs=m.output_size_in_bytes / 2**20)
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    return {}


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _model(spec):
  from vae_qc import models  # pylint: disable=g-import-not-at-top
  return models.ModelConfig(**ARCHS[spec['arch']], upsample_impl=spec['impl'])


def _child_train(spec) -> dict:
  """Pure training step (device-resident batch) and the real train() loop."""
  import jax  # pylint: disable=g-import-not-at-top

  from vae_qc import train  # pylint: disable=g-import-not-at-top
  cfg = _model(spec)
  batch = spec['batch']
  peak = runtime.matmul_peak_gflops()
  optimizer = train.make_optimizer(_train_config(spec).train)
  state = train.create_train_state(cfg, optimizer, jax.random.key(0))
  images = np.random.default_rng(0).random((batch,) + cfg.image_shape, np.float32)
  x, key = jax.device_put(images), jax.random.key(1)
  step_fn = train.compile_train_step(cfg, optimizer)
  t = time.perf_counter()
  compiled = step_fn.lower(state, x, key).compile()
  compile_s = time.perf_counter() - t
  for _ in range(2):
    state, metrics = compiled(state, x, key)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(spec['runs']):
    t = time.perf_counter()
    for _ in range(spec['steps']):
      state, metrics = compiled(state, x, key)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - t) / spec['steps'])
  step_s = statistics.median(times)
  out = dict(train_img_per_s=batch / step_s, train_step_ms=1e3 * step_s,
             train_step_ms_all=[round(1e3 * s, 2) for s in times], train_compile_s=compile_s,
             train_peak_rss_mb=_peak_rss_mb(), train_xla_mb=_xla_memory_mb(compiled),
             matmul_peak_gflops=peak)
  del state, compiled
  if spec['e2e_steps'] > 0:
    out.update(_end_to_end(spec, cfg, step_s))
  return out


def _train_config(spec):
  config = config_lib.load_file(os.path.join(_REPO, 'experiments', 'configs', 'mnist.py'))
  config.train.batch_size = spec['batch']
  config.train.epochs = 1
  config.train.log_every_steps = max(1, spec['e2e_steps'] // 4)
  config.train.checkpoint_every_steps = 10**9
  config.train.nan_policy = 'skip'
  return config


def _end_to_end(spec, cfg, step_s: float) -> dict:
  """train.train() on synthetic images for e2e_steps steps (one epoch): its logged img/s
  after the first log interval (which holds the compilation) over the pure step's."""
  from vae_qc import train  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  config = _train_config(spec)
  n = spec['batch'] * spec['e2e_steps']
  images = np.random.default_rng(1).random((n,) + cfg.image_shape, np.float32)
  with tempfile.TemporaryDirectory() as workdir:
    train.train(config, workdir, images, cfg)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      logged = [json.loads(line) for line in f if line.strip()]
  rates = [r['img_per_s'] for r in logged[1:]]
  if not rates:
    return {}
  e2e = statistics.median(rates)
  return dict(e2e_img_per_s=e2e, e2e_fraction=e2e * step_s / spec['batch'],
              e2e_img_per_s_all=[round(r, 1) for r in rates])


def _child_log_px(spec) -> dict:
  """log p(x) with K samples, chunked, through estimators.log_px and ModelFns."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vae_qc import estimators  # pylint: disable=g-import-not-at-top
  from vae_qc import models  # pylint: disable=g-import-not-at-top
  cfg = _model(spec)
  k, chunk, n = spec['k'], spec['chunk_size'], spec['is_batch']
  variables = models.init(cfg, jax.random.key(0))

  @jax.jit
  def log_px(variables, x, keys):
    fns = models.model_fns(cfg, variables)
    return estimators.log_px(fns.encode, fns.log_likelihood, x, keys, k, chunk)

  def inputs(b):
    x = jnp.asarray(np.random.default_rng(0).random((b,) + cfg.image_shape, np.float32))
    return x, jax.random.split(jax.random.key(2), b)

  x, keys = inputs(n)
  rss_before = _current_rss_mb()
  t = time.perf_counter()
  compiled = log_px.lower(variables, x, keys).compile()
  compile_s = time.perf_counter() - t
  if spec['timed'] and k * n <= 20000:  # a warm-up run where it is cheap
    compiled(variables, x, keys).block_until_ready()
  times = [_timed(lambda: compiled(variables, x, keys).block_until_ready())
           for _ in range(spec['is_runs'])]
  run_s = statistics.median(times)
  out = dict(is_img_per_s=n / run_s, is_decodes_per_s=n * k / run_s, is_run_s=run_s,
             is_run_s_all=[round(s, 3) for s in times], is_compile_s=compile_s,
             is_peak_rss_mb=_peak_rss_mb(), is_rss_before_compile_mb=rss_before,
             is_xla_mb=_xla_memory_mb(compiled))
  if spec['timed']:
    out['matmul_peak_gflops'] = runtime.matmul_peak_gflops()
  return out


def _run_child(spec: dict) -> None:
  cores = sorted(os.sched_getaffinity(0))
  if spec['threads']:
    os.sched_setaffinity(0, cores[:spec['threads']])
  tuning = {}
  if spec['tune_cpu']:
    tuning = runtime.tune_for_cpu()
  fn = {'train': _child_train, 'log_px': _child_log_px}[spec['kind']]
  print(json.dumps(dict(fn(spec), tuning=tuning)), flush=True)


# -------------------------------------------------------------------------------- parent
def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _last_json(text: str) -> dict:
  for line in reversed(text.strip().splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  raise ValueError(f'no JSON line in:\n{text[-2000:]}')


def _ours(spec: dict) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), '--child=' + json.dumps(spec)]
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=_REPO, check=False)
  if done.returncode:
    raise RuntimeError(f'benchmark child {spec} failed:\n{done.stderr[-4000:]}')
  return _last_json(done.stdout)


def _torch(arch: str, batch: int, k: int, threads: int, runs: int) -> dict:
  cmd = [_TORCH_PYTHON.value, _TORCH_SCRIPT.value, '--arch', arch, '--batch', str(batch),
         '--k', str(k), '--runs', str(runs), '--threads', str(threads)]
  cmd += _TORCH_FLAGS.value.split()
  if _TORCH_CHUNK_DECODES.value > 0:
    cmd += ['--k_chunk', str(max(1, min(k, _TORCH_CHUNK_DECODES.value // batch)))]
  cores = sorted(os.sched_getaffinity(0))
  pin = (lambda: os.sched_setaffinity(0, cores[:threads])) if threads else None
  done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin, check=False)
  if done.returncode:
    raise RuntimeError(f'torch reference failed ({" ".join(cmd)}):\n{done.stderr[-4000:]}')
  out = _last_json(done.stdout)
  out['command'] = ' '.join(cmd)
  return out


def _median(values):
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def _ratio(a, b):
  return a / b if a is not None and b else None


def _case(arch: str, batch: int, impl: str, threads: int, torch_threads: int,
          ks: list[int]) -> list[dict]:
  """All K lines of one (arch, batch, impl, threads), ours and torch alternating."""
  base = dict(arch=arch, batch=batch, impl=impl, threads=threads, tune_cpu=_TUNE_CPU.value)
  fl = {k: flops_per_image(arch, k, subpixel=False) for k in ks}
  fl_exec = {k: flops_per_image(arch, k, subpixel=impl == 'subpixel') for k in ks}
  def chunk_for(k, b):
    return _CHUNK_SIZE.value or max(1, min(k, _CHUNK_DECODES.value // b))

  is_batch, chunk = {}, {}
  for k in ks:
    budget = _IS_GFLOP_BUDGET.value
    b = batch if budget <= 0 else int(budget * 1e9 // (k * fl_exec[k]['decoder']))
    is_batch[k] = max(1, min(batch, b))
    chunk[k] = chunk_for(k, is_batch[k])
  pairs = []
  for rep in range(_PAIRS.value):
    load = os.getloadavg()[0]
    _log(f'[{arch} b{batch} {impl} threads={threads or "all"}] pair {rep + 1}/{_PAIRS.value}: '
         f'ours train (load {load:.1f})')
    pair = dict(load_avg=load, ours_train=_ours(dict(base, kind='train', runs=_RUNS.value,
                                                     steps=_STEPS.value,
                                                     e2e_steps=_E2E_STEPS.value)))
    for k in ks:
      _log(f'  ours log p(x) K={k} on {is_batch[k]} images, chunk {chunk[k]}')
      pair[f'ours_is_{k}'] = _ours(dict(base, kind='log_px', k=k, is_batch=is_batch[k],
                                        chunk_size=chunk[k], is_runs=_IS_RUNS.value,
                                        timed=True))
      if _TORCH_PYTHON.value:
        _log(f'  torch K={k} batch {is_batch[k]} threads={torch_threads or "default"}')
        pair[f'torch_{k}'] = _torch(arch, is_batch[k], k, torch_threads, _RUNS.value)
    pairs.append(pair)

  # Memory of log p(x) at the full batch for every K (one run each, all cores): the chunked
  # estimator's peak should not grow with K.
  memory = {}
  for k in ks:
    if not _MEM_CHECK.value:
      break
    if is_batch[k] == batch and chunk[k] == chunk_for(k, batch):
      memory[k] = pairs[-1][f'ours_is_{k}']
      continue
    _log(f'  memory check: ours log p(x) K={k} on {batch} images, chunk '
         f'{chunk_for(k, batch)}, one run')
    memory[k] = _ours(dict(base, kind='log_px', k=k, is_batch=batch, threads=0,
                           chunk_size=chunk_for(k, batch), is_runs=1, timed=False))

  lines = []
  k0 = min(ks)
  for k in ks:
    train_ips = [p['ours_train']['train_img_per_s'] for p in pairs]
    is_ips = [p[f'ours_is_{k}']['is_img_per_s'] for p in pairs]
    last_train, last_is = pairs[-1]['ours_train'], pairs[-1][f'ours_is_{k}']
    peak = max([p['ours_train']['matmul_peak_gflops'] for p in pairs] +
               [p[f'ours_is_{k}']['matmul_peak_gflops'] for p in pairs])
    train_med, is_med = _median(train_ips), _median(is_ips)
    line = dict(
        arch=arch, batch=batch, k=k, threads=threads, impl=impl, is_batch=is_batch[k],
        chunk_size=chunk[k], tuning=last_train['tuning'],
        train_img_per_s=train_med, train_img_per_s_pairs=train_ips,
        train_step_ms=_median([p['ours_train']['train_step_ms'] for p in pairs]),
        train_compile_s=last_train['train_compile_s'],
        train_peak_rss_mb=last_train['train_peak_rss_mb'],
        train_xla_mb=last_train['train_xla_mb'],
        e2e_img_per_s=_median([p['ours_train'].get('e2e_img_per_s') for p in pairs]),
        e2e_fraction=_median([p['ours_train'].get('e2e_fraction') for p in pairs]),
        is_img_per_s=is_med, is_img_per_s_pairs=is_ips,
        is_decodes_per_s=_median([p[f'ours_is_{k}']['is_decodes_per_s'] for p in pairs]),
        is_compile_s=last_is['is_compile_s'], is_peak_rss_mb=last_is['is_peak_rss_mb'],
        is_xla_mb=last_is['is_xla_mb'],
        flops_per_image=dict(model=fl[k], executed=fl_exec[k]),
        train_gflops=train_med * fl_exec[k]['train'] / 1e9,
        is_gflops=is_med * fl_exec[k]['log_px'] / 1e9,
        train_model_gflops=train_med * fl[k]['train'] / 1e9,
        is_model_gflops=is_med * fl[k]['log_px'] / 1e9,
        matmul_peak_gflops=peak,
        load_avg=[p['load_avg'] for p in pairs])
    line['train_peak_fraction'] = _ratio(line['train_gflops'], peak)
    line['is_peak_fraction'] = _ratio(line['is_gflops'], peak)
    if k in memory:
      line['mem'] = dict(batch=batch, chunk_size=chunk_for(k, batch),
                         peak_rss_mb=memory[k]['is_peak_rss_mb'],
                         rss_before_compile_mb=memory[k]['is_rss_before_compile_mb'],
                         xla_temp_mb=memory[k]['is_xla_mb'].get('temp'),
                         run_s=memory[k]['is_run_s'])
    if _TORCH_PYTHON.value:
      torch_runs = [p[f'torch_{k}'] for p in pairs]
      torch_train = [t['train_img_per_s'] if is_batch[k] == batch else None for t in torch_runs]
      torch_is = [t['is_img_per_s'] for t in torch_runs]
      line['torch'] = dict(command=torch_runs[-1]['command'], threads=torch_runs[-1]['threads'],
                           params=torch_runs[-1]['params'], train_img_per_s_pairs=torch_train,
                           is_img_per_s_pairs=torch_is,
                           train_img_per_s=_median(torch_train), is_img_per_s=_median(torch_is))
      line['train_ratio_pairs'] = [_ratio(a, b) for a, b in zip(train_ips, torch_train)]
      line['is_ratio_pairs'] = [_ratio(a, b) for a, b in zip(is_ips, torch_is)]
      line['train_ratio'] = _median(line['train_ratio_pairs'])
      line['is_ratio'] = _median(line['is_ratio_pairs'])
    lines.append(line)
  ref = next(line for line in lines if line['k'] == k0).get('mem')
  for line in lines:
    if ref and 'mem' in line:
      line['mem'][f'peak_rss_ratio_vs_k{k0}'] = _ratio(line['mem']['peak_rss_mb'],
                                                       ref['peak_rss_mb'])
      line['mem'][f'xla_temp_ratio_vs_k{k0}'] = _ratio(line['mem']['xla_temp_mb'],
                                                       ref['xla_temp_mb'])
  return lines


def main(argv):
  del argv
  if _CHILD.value:
    _run_child(json.loads(_CHILD.value))
    return
  for arch in _ARCH.value:
    if arch not in ARCHS:
      raise app.UsageError(f'--arch: unknown {arch!r}; choose from {", ".join(ARCHS)}.')
  threads = [int(t) for t in _THREADS.value]
  torch_threads = [int(t) for t in _TORCH_THREADS.value] or threads
  if len(torch_threads) != len(threads):
    raise app.UsageError('--torch_threads needs one value per --threads value.')
  if _TORCH_PYTHON.value and not os.path.exists(_TORCH_SCRIPT.value):
    raise app.UsageError(f'--torch_script {_TORCH_SCRIPT.value} does not exist.')
  ks = [int(k) for k in _K.value]
  for arch in _ARCH.value:
    for batch in (int(b) for b in _BATCH.value):
      for impl in _IMPL.value:
        for t, tt in zip(threads, torch_threads):
          for line in _case(arch, batch, impl, t, tt, ks):
            print(json.dumps(line), flush=True)


if __name__ == '__main__':
  app.run(main)
