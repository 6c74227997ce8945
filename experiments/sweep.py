r"""Sweeps of the MNIST study: run them (locally, P at a time, or as a SLURM array) and
aggregate every run's results.json into one table (``vae_qc.tables``).

  python experiments/sweep.py run --digits 0-9 --seeds 0,1 --latents 2,32 --parallel 2 \
      --out runs/sweep [-- --config.train.epochs=10 ...]
  python experiments/sweep.py slurm --digits 0-9 --seeds 0-4 --latents 2,32 --out runs/sweep \
      [--submit] [--partition gpu --time 02:00:00 --gpus_per_run 1]
  python experiments/sweep.py aggregate runs/sweep

(``./launch.sh sweep ...`` and ``./launch.sh aggregate DIR`` call these.) Each run is
``experiments/mnist_anomaly.py --workdir=OUT/d<digit>_z<latent>_s<seed>`` with
``--config.data.anomalous_digit``, ``--config.model.latent`` and ``--config.seed`` set, plus
the extra arguments after ``--``. ``OUT/sweep.json`` records the plan; a run is finished when
its ``results.json`` exists, and re-running a sweep skips finished runs (unfinished ones
resume from their last checkpoint). A run that fails leaves ``failed.json`` (exit status,
last error line) and its log in ``log.txt``; the table reports it rather than hiding it. A run
that was preempted (exit status 75: it saved its state on SIGTERM / SIGUSR1) leaves
``preempted.json`` instead and is listed as preempted: re-running the sweep resumes it, and a
SLURM array task requeues itself (``scontrol requeue``). Signals the sweep process gets
(TERM, USR1, USR2) are passed on to its runs, and then no new run starts.

Tables: ``OUT/summary.csv`` and ``OUT/summary.md`` (per digit and latent: mean ± std over
seeds of every score's AUROC, next to the paper's AUROC) and ``OUT/runs.csv`` (one row per
run, with its status).
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Sequence

from absl import app
from absl import flags

from vae_qc import config as config_lib
from vae_qc import progress as progress_lib
from vae_qc import report as report_lib
from vae_qc import tables
from vae_qc import workdir as wd
from vae_qc.errors import ConfigError, PREEMPTED_EXIT_STATUS, VaeQcError

COMMANDS = ('run', 'slurm', 'run-one', 'aggregate')
DEFAULT_SCRIPT = 'experiments/mnist_anomaly.py'
DEFAULT_CONFIG = 'experiments/configs/mnist.py'

# Tonnaer et al. (2019), MNIST one-digit-anomalous, image AUROC per anomalous digit 0-9, at
# latent 2 (its headline, mean 0.855): the bar for every latent size of a sweep.
_PAPER = dict(enumerate((.96, .73, .97, .94, .73, .92, .95, .77, .92, .66)))
PAPER_AUROC: dict[int, dict[int, float]] = {latent: _PAPER for latent in range(1, 1025)}
PAPER_NOTE = ('Paper: Tonnaer et al. (2019), −ELBO at latent 2 (its headline table, mean '
              '0.855), shown in the rows of every latent size.')

# The grid (run, slurm).
_DIGITS = flags.DEFINE_string('digits', '0-9', 'Anomalous digits, e.g. 0-9 or 0,3,7.')
_SEEDS = flags.DEFINE_string('seeds', '0', 'Training seeds (config.seed), e.g. 0-4.')
_LATENTS = flags.DEFINE_string('latents', '2', 'Latent sizes, e.g. 2,32.')
_OUT = flags.DEFINE_string('out', 'runs/sweep', 'Sweep folder (one sub-folder per run).')
_SCRIPT = flags.DEFINE_string('script', DEFAULT_SCRIPT, 'The study script of each run.')
_CONFIG = flags.DEFINE_string('config', DEFAULT_CONFIG, 'The config file of each run.')
_ALLOW_CHANGED_ARGS = flags.DEFINE_bool(
    'allow_changed_args', False, 'Mix runs made with other extra arguments into this folder.')
# run
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'run: runs at a time.')
# slurm
_SUBMIT = flags.DEFINE_bool('submit', False, 'slurm: write the script and sbatch it.')
_PARTITION = flags.DEFINE_string('partition', '', 'slurm: partition.')
_ACCOUNT = flags.DEFINE_string('account', '', 'slurm: account.')
_TIME = flags.DEFINE_string('time', '04:00:00', 'slurm: time limit of one run.')
_GPUS_PER_RUN = flags.DEFINE_integer('gpus_per_run', 1, 'slurm: GPUs per run; 0: CPU only.')
_GRES = flags.DEFINE_string('gres', '', 'slurm: e.g. gpu:1 (instead of --gpus).')
_TASKS_PER_RUN = flags.DEFINE_integer(
    'tasks_per_run', 1, 'slurm: processes per run (multi-GPU / multi-node data parallel).')
_CPUS_PER_TASK = flags.DEFINE_integer('cpus_per_task', 4, 'slurm: CPUs per process.')
_MEM = flags.DEFINE_string('mem', '', 'slurm: memory per run.')
_MAX_CONCURRENT = flags.DEFINE_integer('max_concurrent', 0, 'slurm: array %N limit.')
_SETUP = flags.DEFINE_string('setup', '', 'slurm: shell line run before each run, e.g. '
                             '"module load cuda".')
_SIGNAL = flags.DEFINE_string(
    'signal', 'USR1@120', 'slurm: sbatch --signal, the preemption notice before the time '
    "limit (runs checkpoint, exit 75 and are requeued); '' for none.")
# Signals passed on to the runs (they checkpoint and exit 75 on TERM and USR1).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


# ------------------------------------------------------------------------------------ plan
@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the sweep."""
  digit: int
  latent: int
  seed: int

  @property
  def name(self) -> str:
    return f'd{self.digit}_z{self.latent}_s{self.seed}'

  def args(self) -> list[str]:
    return [f'--config.data.anomalous_digit={self.digit}', f'--config.model.latent={self.latent}',
            f'--config.seed={self.seed}']


def parse_ints(text: str, what: str) -> list[int]:
  """'0-9', '0,3,7', '0-2,5' -> sorted unique ints."""
  out: set[int] = set()
  try:
    for part in str(text).split(','):
      part = part.strip()
      if not part:
        continue
      if '-' in part:
        lo, hi = (int(v) for v in part.split('-', 1))
        if hi < lo:
          raise ValueError(part)
        out.update(range(lo, hi + 1))
      else:
        out.add(int(part))
  except ValueError as e:
    raise ConfigError(f'--{what}: cannot read {text!r} as a list like 0-9 or 0,3,7.') from e
  if not out:
    raise ConfigError(f'--{what} is empty.')
  return sorted(out)


def make_runs(digits: Iterable[int], latents: Iterable[int], seeds: Iterable[int]) -> list[Run]:
  for d in digits:
    if not 0 <= d <= 9:
      raise ConfigError(f'--digits: {d} is not an MNIST digit (0-9).')
  # Seed by seed: a sweep stopped early has whole tables of its first seeds, not some digits
  # with every seed and others with none.
  return [Run(d, z, s) for s in seeds for z in latents for d in digits]


def write_plan(out: str, runs: Sequence[Run], extra_args: Sequence[str], script: str,
               config: str, allow_changed_args: bool = False) -> dict[str, Any]:
  """Writes (or extends) ``OUT/sweep.json``; returns the plan. Refuses to mix runs made with
  other extra arguments into one table unless ``allow_changed_args``."""
  old = tables.load_plan(out)
  known: list[dict[str, Any]] = []
  if old is not None:
    if (old.get('extra_args') != list(extra_args) or old.get('config') != config
        or old.get('script') != script) and not allow_changed_args:
      raise ConfigError(
          f'{out} holds a sweep made with other arguments ({old.get("script")} '
          f'{old.get("config")} {" ".join(old.get("extra_args", []))!r}; now {script} {config} '
          f'{" ".join(extra_args)!r}). Use a new --out, or pass --allow_changed_args to mix them.')
    known = list(old.get('runs', []))
  names = {r['name'] for r in known}
  for r in runs:
    if r.name not in names:
      known.append(dict(name=r.name, **dataclasses.asdict(r)))
      names.add(r.name)
  plan = dict(script=script, config=config, extra_args=list(extra_args), runs=known)
  wd.write_json(tables.plan_path(out), plan)
  return plan


def check_extra_args(config_path: str, extra_args: Sequence[str]) -> None:
  """Fails early (before any run starts) on an unknown ``--config.x`` override."""
  config_lib.check_override_flags(config_lib.load_file(config_path), list(extra_args))
  for a in extra_args:
    for own in ('--workdir', '--config.data.anomalous_digit', '--config.model.latent',
                '--config.seed='):
      if a.startswith(own):
        raise ConfigError(f'{a.split("=")[0]} is set by the sweep for each run; use --digits, '
                          '--latents and --seeds instead.')


# ------------------------------------------------------------------------------------ runs
def _last_error(log_path: str) -> str:
  try:
    with open(log_path, errors='replace') as f:
      lines = [l.rstrip() for l in f if l.strip()]
  except OSError:
    return ''
  errors = [l for l in lines if l.startswith('error:') or 'Error' in l.split(':')[0]]
  return (errors or lines or [''])[-1][:500]


def command(plan: dict[str, Any], run: dict[str, Any], out: str) -> list[str]:
  return [sys.executable, plan['script'], f'--config={plan["config"]}',
          f'--workdir={os.path.join(out, run["name"])}',
          *Run(run['digit'], run['latent'], run['seed']).args(), *plan['extra_args']]


def _env(parallel: int, out: str) -> dict[str, str]:
  env = dict(os.environ)
  if parallel > 1:  # several runs share the accelerator(s)
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  # The runs of a sweep compile the same programs: share them (set it to '' to turn off).
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.abspath(os.path.join(out, '.jax_cache')))
  return env


def _start(plan, run, out, parallel) -> tuple[subprocess.Popen, Any]:
  run_dir = os.path.join(out, run['name'])
  os.makedirs(run_dir, exist_ok=True)
  for name in ('failed.json', 'preempted.json'):
    if os.path.exists(os.path.join(run_dir, name)):
      os.remove(os.path.join(run_dir, name))
  task = os.environ.get('SLURM_PROCID', '0')  # one log per process of a multi-process run
  log = open(os.path.join(run_dir, 'log.txt' if task == '0' else f'log.{task}.txt'), 'a')
  cmd = command(plan, run, out)
  log.write(f'# {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(cmd)}\n')
  log.flush()
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(parallel, out))
  return proc, log


def _finish(run, out, returncode: int, seconds: float) -> str:
  run_dir = os.path.join(out, run['name'])
  writer = os.environ.get('SLURM_PROCID', '0') == '0'  # process 0 writes results.json
  if returncode == 0 and (not writer or os.path.exists(os.path.join(run_dir, 'results.json'))):
    return 'done'
  if returncode == PREEMPTED_EXIT_STATUS:
    wd.write_json(os.path.join(run_dir, 'preempted.json'),
                  dict(returncode=returncode, seconds=seconds,
                       time=time.strftime('%Y-%m-%d %H:%M:%S')))
    return 'preempted'
  wd.write_json(os.path.join(run_dir, 'failed.json'),
                dict(returncode=returncode, seconds=seconds,
                     error=_last_error(os.path.join(run_dir, 'log.txt')),
                     time=time.strftime('%Y-%m-%d %H:%M:%S')))
  return 'failed'


def run_one(out: str, index: int) -> int:
  """Runs run ``index`` of ``OUT/sweep.json`` in this process's child (SLURM array task).
  Returns the exit status (0 if done or already done)."""
  plan = tables.load_plan(out)
  if plan is None:
    raise VaeQcError(f'{tables.plan_path(out)} not found; create the sweep first.')
  if not 0 <= index < len(plan['runs']):
    raise VaeQcError(f'run index {index} out of range [0, {len(plan["runs"])}).')
  run = plan['runs'][index]
  if tables.status(os.path.join(out, run['name'])) == 'done':
    print(f'{run["name"]}: finished already, skipped.')
    return 0
  t0 = time.time()
  proc, log = _start(plan, run, out, 1)
  with _forwarding_signals(lambda signum: proc.send_signal(signum)):
    rc = proc.wait()
  log.close()
  result = _finish(run, out, rc, time.time() - t0)
  note = ' (preempted: re-run or requeue to resume)' if result == 'preempted' else ''
  print(f'{run["name"]}: {result} (exit status {rc}) in {time.time() - t0:.0f}s{note}.')
  if result == 'preempted':
    return PREEMPTED_EXIT_STATUS
  return 0 if result == 'done' else (rc or 1)


class _forwarding_signals:  # pylint: disable=invalid-name
  """Within the block, FORWARDED_SIGNALS call ``forward(signum)`` (and are recorded in
  ``received``) instead of killing this process; the old handlers come back on exit."""

  def __init__(self, forward):
    self.forward, self.received, self.previous = forward, [], {}

  def _handle(self, signum, frame):
    del frame
    self.received.append(signum)
    self.forward(signum)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # else Python cannot
      self.previous = {s: signal.signal(s, self._handle) for s in FORWARDED_SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self.previous.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def run_local(out: str, plan: dict[str, Any], names: Sequence[str],
              parallel: int = 1) -> dict[str, str]:
  """Runs the plan's runs ``names`` that are not finished, ``parallel`` at a time.
  Returns {name: 'done' | 'failed' | 'preempted' | 'skipped'}. A signal of FORWARDED_SIGNALS
  is passed on to the running runs, and no new run starts after it."""
  by_name = {r['name']: r for r in plan['runs']}
  todo, outcome = [], {}
  for name in names:
    if tables.status(os.path.join(out, name)) == 'done':
      outcome[name] = 'skipped'
    else:
      todo.append(by_name[name])
  print(f'sweep {out}: {len(names)} runs, {len(names) - len(todo)} finished already, '
        f'{len(todo)} to run, {parallel} at a time.', flush=True)
  running: list[tuple[dict, subprocess.Popen, Any, float]] = []
  done = 0

  def forward(signum):
    for _, proc, _, _ in running:
      if proc.poll() is None:
        proc.send_signal(signum)
  signals = _forwarding_signals(forward)
  # A line at a steady interval while runs are going (each run logs to its own log.txt).
  progress = progress_lib.Progress(len(todo), 'sweep', unit='run',
                                   interval_s=max(30.0, progress_lib.default_interval()),
                                   log=lambda fmt, *a: print(fmt % a, flush=True))
  try:
    signals.__enter__()
    while todo or running:
      while todo and len(running) < max(1, parallel) and not signals.received:
        run = todo.pop(0)
        proc, log = _start(plan, run, out, parallel)
        running.append((run, proc, log, time.time()))
      time.sleep(0.2)
      progress.tick()
      for item in list(running):
        run, proc, log, t0 = item
        rc = proc.poll()
        if rc is None:
          continue
        running.remove(item)
        log.close()
        outcome[run['name']] = _finish(run, out, rc, time.time() - t0)
        done += 1
        progress.done += 1
        extra = ''
        if outcome[run['name']] == 'failed':
          extra = f' (exit status {rc}: see {os.path.join(out, run["name"], "log.txt")})'
        elif outcome[run['name']] == 'preempted':
          extra = ' (state saved; re-run the same command to resume it)'
        print(f'[{done}/{done + len(todo) + len(running)}] {run["name"]} '
              f'{outcome[run["name"]]} in {time.time() - t0:.0f}s{extra}', flush=True)
      if signals.received and not running:
        break
  except KeyboardInterrupt:
    for run, proc, log, _ in running:
      proc.terminate()
    for run, proc, log, _ in running:
      proc.wait()
      log.close()
    raise
  finally:
    signals.__exit__()
  for run in todo:  # not started: the sweep itself was stopped by a signal
    outcome[run['name']] = 'preempted'
  return outcome


# ----------------------------------------------------------------------------------- SLURM
def _ranges(indices: Sequence[int]) -> str:
  """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (a SLURM --array list)."""
  parts, ordered = [], sorted(set(indices))
  start = prev = ordered[0]
  for i in ordered[1:] + [None]:
    if i is not None and i == prev + 1:
      prev = i
      continue
    parts.append(str(start) if start == prev else f'{start}-{prev}')
    if i is not None:
      start = prev = i
  return ','.join(parts)


def slurm_script(out: str, plan: dict[str, Any], indices: Sequence[int], *, partition: str = '',
                 account: str = '', time_limit: str = '04:00:00', gpus_per_run: int = 1,
                 tasks_per_run: int = 1, cpus_per_task: int = 4, mem: str = '',
                 max_concurrent: int = 0, job_name: str = 'vae_qc_sweep',
                 setup: str = '', gres: str = '', signal_spec: str = 'USR1@120') -> str:
  """An sbatch array script: array task i runs run i of ``OUT/sweep.json`` (finished runs are
  left out of ``--array``). ``tasks_per_run`` > 1 spreads one run over several processes
  (``srun``; ``jax.distributed`` finds them through SLURM), ``gpus_per_run`` in all
  (``gres``, e.g. 'gpu:a100:1', replaces ``--gpus`` on clusters that want ``--gres``).

  Preemption: ``--requeue`` lets SLURM requeue a preempted task, ``--signal=signal_spec``
  (default USR1 120 s before the time limit) asks the run to checkpoint, and a task whose run
  exits with status 75 (preempted, state saved) requeues itself with ``scontrol requeue``;
  the requeued task resumes from the checkpoint (``--open-mode=append`` keeps its log)."""
  if not indices:
    raise VaeQcError('every run of the sweep is finished; nothing to submit.')
  out_abs = os.path.abspath(out)
  array = _ranges(indices) + (f'%{max_concurrent}' if max_concurrent else '')
  lines = ['#!/bin/bash', f'#SBATCH --job-name={job_name}', f'#SBATCH --array={array}',
           f'#SBATCH --output={out_abs}/slurm/%A_%a.out', f'#SBATCH --time={time_limit}',
           f'#SBATCH --ntasks={tasks_per_run}', f'#SBATCH --cpus-per-task={cpus_per_task}',
           '#SBATCH --requeue', '#SBATCH --open-mode=append']
  if signal_spec:
    lines.append(f'#SBATCH --signal={signal_spec}')
  if gres:
    lines.append(f'#SBATCH --gres={gres}')
  elif gpus_per_run:
    lines.append(f'#SBATCH --gpus={gpus_per_run}')
  for flag, value in (('partition', partition), ('account', account), ('mem', mem)):
    if value:
      lines.append(f'#SBATCH --{flag}={value}')
  lines += [
      '# Generated by experiments/sweep.py; one array task per unfinished run of '
      f'{out_abs}/{tables.PLAN_FILE}.',
      'set -euo pipefail',
      f'cd {shlex.quote(os.path.abspath("."))}',
  ]
  if setup:
    lines.append(setup)
  lines += [
      f'export JAX_COMPILATION_CACHE_DIR=${{JAX_COMPILATION_CACHE_DIR:-{out_abs}/.jax_cache}}',
      'rc=0',
      f'srun --kill-on-bad-exit=1 {shlex.quote(sys.executable)} '
      f'{shlex.quote(os.path.abspath(__file__))} run-one {shlex.quote(out_abs)} '
      '"$SLURM_ARRAY_TASK_ID" || rc=$?',
      f'if [ "$rc" = {PREEMPTED_EXIT_STATUS} ]; then  # preempted, state saved: run again',
      '  echo "preempted: requeueing ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
      '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || true',
      'fi',
      'exit "$rc"',
      '',
  ]
  del plan
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------- CLI
def _prepare(extra: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
  check_extra_args(_CONFIG.value, extra)
  runs = make_runs(parse_ints(_DIGITS.value, 'digits'), parse_ints(_LATENTS.value, 'latents'),
                   parse_ints(_SEEDS.value, 'seeds'))
  os.makedirs(_OUT.value, exist_ok=True)
  plan = write_plan(_OUT.value, runs, extra, _SCRIPT.value, _CONFIG.value,
                    _ALLOW_CHANGED_ARGS.value)
  return plan, [r.name for r in runs]


def _aggregate(out: str) -> tuple[str, str, str]:
  written = tables.write_tables(out, PAPER_AUROC, PAPER_NOTE)
  report_lib.write_sweep_report(out, PAPER_AUROC, PAPER_NOTE)
  return written


def _run(extra: Sequence[str]) -> int:
  if _PARALLEL.value < 1:
    raise ConfigError(f'--parallel must be >= 1, got {_PARALLEL.value}.')
  plan, names = _prepare(extra)
  outcome = run_local(_OUT.value, plan, names, _PARALLEL.value)
  csv_path, md_path, markdown = _aggregate(_OUT.value)
  print(markdown)
  print(f'wrote {csv_path} and {md_path}')
  failed = sorted(n for n, o in outcome.items() if o == 'failed')
  preempted = sorted(n for n, o in outcome.items() if o == 'preempted')
  if preempted:
    print(f'{len(preempted)} run(s) preempted: {", ".join(preempted)}; re-run the same '
          'command to resume them (they continue from their checkpoints).', file=sys.stderr)
  if failed:
    print(f'{len(failed)} run(s) failed: {", ".join(failed)}; re-run the same command to '
          'retry them (finished runs are skipped).', file=sys.stderr)
    return 1
  return PREEMPTED_EXIT_STATUS if preempted else 0


def _slurm(extra: Sequence[str]) -> int:
  out = _OUT.value
  plan, names = _prepare(extra)
  index = {r['name']: i for i, r in enumerate(plan['runs'])}
  todo = [index[n] for n in names if tables.status(os.path.join(out, n)) != 'done']
  script = slurm_script(out, plan, todo, partition=_PARTITION.value, account=_ACCOUNT.value,
                        time_limit=_TIME.value, gpus_per_run=_GPUS_PER_RUN.value,
                        tasks_per_run=_TASKS_PER_RUN.value, cpus_per_task=_CPUS_PER_TASK.value,
                        mem=_MEM.value, max_concurrent=_MAX_CONCURRENT.value,
                        setup=_SETUP.value, gres=_GRES.value, signal_spec=_SIGNAL.value)
  if not _SUBMIT.value:
    print(script, end='')
    return 0
  path = os.path.join(out, 'sweep.sbatch')
  os.makedirs(os.path.join(out, 'slurm'), exist_ok=True)
  with open(path, 'w') as f:
    f.write(script)
  try:
    result = subprocess.run(['sbatch', path], check=False, capture_output=True, text=True)
  except FileNotFoundError as e:
    raise VaeQcError(f'sbatch not found ({e}); run on a SLURM login node, or print the '
                     'script with --slurm and submit it there.') from e
  if result.returncode:
    raise VaeQcError(f'sbatch {path} failed ({result.returncode}): {result.stderr.strip()}')
  print(result.stdout.strip())
  print(f'{len(todo)} runs submitted ({path}); when they finish: ./launch.sh aggregate {out}')
  return 0


def parse(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """absl's flags from ``argv`` (program name first), up to ``--``; returns (the command and
  its positional arguments, the extra arguments after ``--`` for every run)."""
  argv = list(argv)
  extra: list[str] = []
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  flags.FLAGS.unparse_flags()  # each call starts from the defaults (tests call it repeatedly)
  try:
    positional = flags.FLAGS(argv)[1:]
  except flags.Error as e:
    raise app.UsageError(str(e)) from e
  return positional, extra


def execute(positional: Sequence[str], extra: Sequence[str]) -> int:
  """Runs ``COMMAND [ARGS]`` with the parsed flags; returns the exit status (2: our error)."""
  if not positional or positional[0] not in COMMANDS:
    raise app.UsageError(f'the first argument is the command, one of {", ".join(COMMANDS)}; '
                         f'got {list(positional)}.')
  cmd, args = positional[0], list(positional[1:])
  if extra and cmd not in ('run', 'slurm'):
    raise app.UsageError(f'extra arguments after -- only apply to run and slurm, got {extra}')
  want = {'run': 0, 'slurm': 0, 'run-one': 2, 'aggregate': 1}[cmd]
  if len(args) != want:
    raise app.UsageError(f'{cmd} takes {want} argument(s) ({"OUT INDEX" if want == 2 else "OUT"}'
                         f' for run-one and aggregate), got {args}.')
  try:
    if cmd == 'aggregate':
      csv_path, md_path, markdown = _aggregate(args[0])
      print(markdown)
      print(f'wrote {csv_path}, {md_path}, {os.path.join(args[0], "runs.csv")} and '
            f'{os.path.join(args[0], "report.html")}')
      return 0
    if cmd == 'run-one':
      return run_one(args[0], int(args[1]))
    return _run(extra) if cmd == 'run' else _slurm(extra)
  except VaeQcError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def main(argv: Sequence[str]) -> int:
  """``COMMAND [ARGS] [--flags] [-- overrides]`` (no program name) -> exit status: what the
  command line does, without ``app.run`` (for tests and other Python callers)."""
  return execute(*parse([sys.argv[0], *argv]))


if __name__ == '__main__':
  app.run(lambda args: sys.exit(execute(*args)), flags_parser=parse)
