r"""Sweeps of the MNIST study: run them (locally, P at a time, or as a SLURM array) and
aggregate every run's results.json into one table.

  python -m vae_qc.sweep run --digits 0-9 --seeds 0,1 --latents 2,32 --parallel 2 \
      --out runs/sweep [-- --config.train.epochs=10 ...]
  python -m vae_qc.sweep slurm --digits 0-9 --seeds 0-4 --latents 2,32 --out runs/sweep \
      [--submit] [--partition gpu --time 02:00:00 --gpus_per_run 1]
  python -m vae_qc.sweep aggregate runs/sweep

(``./launch.sh sweep ...`` and ``./launch.sh aggregate DIR`` call these.) Each run is
``experiments/mnist_anomaly.py --workdir=OUT/d<digit>_z<latent>_s<seed>`` with
``--config.data.anomalous_digit``, ``--config.model.latent`` and ``--config.seed`` set, plus
the extra arguments after ``--``. ``OUT/sweep.json`` records the plan; a run is finished when
its ``results.json`` exists, and re-running a sweep skips finished runs (unfinished ones
resume from their last checkpoint). A run that fails leaves ``failed.json`` (exit status,
last error line) and its log in ``log.txt``; the table reports it rather than hiding it.

Tables: ``OUT/summary.csv`` and ``OUT/summary.md`` (per digit and latent: mean ± std over
seeds of every score's AUROC, next to the paper's AUROC) and ``OUT/runs.csv`` (one row per
run, with its status).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np

from vae_qc.errors import ConfigError, VaeQcError

PLAN_FILE = 'sweep.json'
DEFAULT_SCRIPT = 'experiments/mnist_anomaly.py'
DEFAULT_CONFIG = 'experiments/configs/mnist.py'

# Tonnaer et al. (2019), MNIST one-digit-anomalous, image AUROC per anomalous digit 0-9.
# Latent 2 only; no latent-32 values are reproduced here (column left empty).
PAPER_AUROC: dict[int, dict[int, float]] = {
    2: dict(enumerate((.96, .73, .97, .94, .73, .92, .95, .77, .92, .66))),
}


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
  return [Run(d, z, s) for z in latents for d in digits for s in seeds]


def _plan_path(out: str) -> str:
  return os.path.join(out, PLAN_FILE)


def load_plan(out: str) -> dict[str, Any] | None:
  path = _plan_path(out)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_plan(out: str, runs: Sequence[Run], extra_args: Sequence[str], script: str,
               config: str, allow_changed_args: bool = False) -> dict[str, Any]:
  """Writes (or extends) ``OUT/sweep.json``; returns the plan. Refuses to mix runs made with
  other extra arguments into one table unless ``allow_changed_args``."""
  from vae_qc import workdir as wd  # pylint: disable=g-import-not-at-top
  old = load_plan(out)
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
  wd.write_json(_plan_path(out), plan)
  return plan


def check_extra_args(config_path: str, extra_args: Sequence[str]) -> None:
  """Fails early (before any run starts) on an unknown ``--config.x`` override."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from vae_qc import config as config_lib  # pylint: disable=g-import-not-at-top
  if not os.path.exists(config_path):
    raise ConfigError(f'config file {config_path} not found.')
  spec = importlib.util.spec_from_file_location('_sweep_config', config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_lib.check_override_flags(module.get_config(), list(extra_args))
  for a in extra_args:
    for own in ('--workdir', '--config.data.anomalous_digit', '--config.model.latent',
                '--config.seed='):
      if a.startswith(own):
        raise ConfigError(f'{a.split("=")[0]} is set by the sweep for each run; use --digits, '
                          '--latents and --seeds instead.')


# ------------------------------------------------------------------------------------ runs
def status(run_dir: str) -> str:
  """'done' (results.json), 'failed' (failed.json) or 'pending'."""
  if os.path.exists(os.path.join(run_dir, 'results.json')):
    return 'done'
  if os.path.exists(os.path.join(run_dir, 'failed.json')):
    return 'failed'
  return 'pending'


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
  failed = os.path.join(run_dir, 'failed.json')
  if os.path.exists(failed):
    os.remove(failed)
  task = os.environ.get('SLURM_PROCID', '0')  # one log per process of a multi-process run
  log = open(os.path.join(run_dir, 'log.txt' if task == '0' else f'log.{task}.txt'), 'a')
  cmd = command(plan, run, out)
  log.write(f'# {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(cmd)}\n')
  log.flush()
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(parallel, out))
  return proc, log


def _finish(run, out, returncode: int, seconds: float) -> str:
  from vae_qc import workdir as wd  # pylint: disable=g-import-not-at-top
  run_dir = os.path.join(out, run['name'])
  writer = os.environ.get('SLURM_PROCID', '0') == '0'  # process 0 writes results.json
  if returncode == 0 and (not writer or os.path.exists(os.path.join(run_dir, 'results.json'))):
    return 'done'
  wd.write_json(os.path.join(run_dir, 'failed.json'),
                dict(returncode=returncode, seconds=seconds,
                     error=_last_error(os.path.join(run_dir, 'log.txt')),
                     time=time.strftime('%Y-%m-%d %H:%M:%S')))
  return 'failed'


def run_one(out: str, index: int) -> int:
  """Runs run ``index`` of ``OUT/sweep.json`` in this process's child (SLURM array task).
  Returns the exit status (0 if done or already done)."""
  plan = load_plan(out)
  if plan is None:
    raise VaeQcError(f'{_plan_path(out)} not found; create the sweep first.')
  if not 0 <= index < len(plan['runs']):
    raise VaeQcError(f'run index {index} out of range [0, {len(plan["runs"])}).')
  run = plan['runs'][index]
  if status(os.path.join(out, run['name'])) == 'done':
    print(f'{run["name"]}: finished already, skipped.')
    return 0
  t0 = time.time()
  proc, log = _start(plan, run, out, 1)
  rc = proc.wait()
  log.close()
  result = _finish(run, out, rc, time.time() - t0)
  print(f'{run["name"]}: {result} (exit status {rc}) in {time.time() - t0:.0f}s.')
  return 0 if result == 'done' else (rc or 1)


def run_local(out: str, plan: dict[str, Any], names: Sequence[str], parallel: int = 1) -> dict[str, str]:
  """Runs the plan's runs ``names`` that are not finished, ``parallel`` at a time.
  Returns {name: 'done' | 'failed' | 'skipped'}."""
  by_name = {r['name']: r for r in plan['runs']}
  todo, outcome = [], {}
  for name in names:
    if status(os.path.join(out, name)) == 'done':
      outcome[name] = 'skipped'
    else:
      todo.append(by_name[name])
  print(f'sweep {out}: {len(names)} runs, {len(names) - len(todo)} finished already, '
        f'{len(todo)} to run, {parallel} at a time.', flush=True)
  running: list[tuple[dict, subprocess.Popen, Any, float]] = []
  done = 0
  try:
    while todo or running:
      while todo and len(running) < max(1, parallel):
        run = todo.pop(0)
        proc, log = _start(plan, run, out, parallel)
        running.append((run, proc, log, time.time()))
      time.sleep(0.2)
      for item in list(running):
        run, proc, log, t0 = item
        rc = proc.poll()
        if rc is None:
          continue
        running.remove(item)
        log.close()
        outcome[run['name']] = _finish(run, out, rc, time.time() - t0)
        done += 1
        extra = ''
        if outcome[run['name']] == 'failed':
          extra = f' (exit status {rc}: see {os.path.join(out, run["name"], "log.txt")})'
        print(f'[{done}/{done + len(todo) + len(running)}] {run["name"]} '
              f'{outcome[run["name"]]} in {time.time() - t0:.0f}s{extra}', flush=True)
  except KeyboardInterrupt:
    for run, proc, log, _ in running:
      proc.terminate()
    for run, proc, log, _ in running:
      proc.wait()
      log.close()
    raise
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
                 setup: str = '', gres: str = '') -> str:
  """An sbatch array script: array task i runs run i of ``OUT/sweep.json`` (finished runs are
  left out of ``--array``). ``tasks_per_run`` > 1 spreads one run over several processes
  (``srun``; ``jax.distributed`` finds them through SLURM), ``gpus_per_run`` in all
  (``gres``, e.g. 'gpu:a100:1', replaces ``--gpus`` on clusters that want ``--gres``)."""
  if not indices:
    raise VaeQcError('every run of the sweep is finished; nothing to submit.')
  out_abs = os.path.abspath(out)
  array = _ranges(indices) + (f'%{max_concurrent}' if max_concurrent else '')
  lines = ['#!/bin/bash', f'#SBATCH --job-name={job_name}', f'#SBATCH --array={array}',
           f'#SBATCH --output={out_abs}/slurm/%A_%a.out', f'#SBATCH --time={time_limit}',
           f'#SBATCH --ntasks={tasks_per_run}', f'#SBATCH --cpus-per-task={cpus_per_task}']
  if gres:
    lines.append(f'#SBATCH --gres={gres}')
  elif gpus_per_run:
    lines.append(f'#SBATCH --gpus={gpus_per_run}')
  for flag, value in (('partition', partition), ('account', account), ('mem', mem)):
    if value:
      lines.append(f'#SBATCH --{flag}={value}')
  lines += [
      '# Generated by vae_qc.sweep; one array task per unfinished run of '
      f'{out_abs}/{PLAN_FILE}.',
      'set -euo pipefail',
      f'cd {shlex.quote(os.path.abspath("."))}',
  ]
  if setup:
    lines.append(setup)
  lines += [
      f'export JAX_COMPILATION_CACHE_DIR=${{JAX_COMPILATION_CACHE_DIR:-{out_abs}/.jax_cache}}',
      f'srun --kill-on-bad-exit=1 {shlex.quote(sys.executable)} -m vae_qc.sweep run-one '
      f'{shlex.quote(out_abs)} "$SLURM_ARRAY_TASK_ID"',
      '',
  ]
  del plan
  return '\n'.join(lines)


# ------------------------------------------------------------------------------- aggregate
def _fmt(mean: float, std: float, n: int) -> str:
  if not math.isfinite(mean):
    return ''
  return f'{mean:.3f} ± {std:.3f}' if n > 1 else f'{mean:.3f}'


def collect(out: str) -> list[dict[str, Any]]:
  """One row per run (from the plan and any run folder): name, digit, latent, seed, status,
  error and {score: auroc}."""
  plan = load_plan(out) or {'runs': []}
  runs = {r['name']: r for r in plan['runs']}
  if os.path.isdir(out):
    for name in sorted(os.listdir(out)):
      path = os.path.join(out, name, 'results.json')
      if name not in runs and os.path.exists(path):
        cfg_path = os.path.join(out, name, 'config.json')
        try:
          with open(cfg_path) as f:
            cfg = json.load(f)
          runs[name] = dict(name=name, digit=int(cfg['data']['anomalous_digit']),
                            latent=int(cfg['model']['latent']), seed=int(cfg['seed']))
        except (OSError, KeyError, ValueError, TypeError):
          continue
  rows = []
  for name, run in runs.items():
    run_dir = os.path.join(out, name)
    row = dict(name=name, digit=run['digit'], latent=run['latent'], seed=run['seed'],
               status=status(run_dir), error='', auroc={})
    if row['status'] == 'done':
      try:
        with open(os.path.join(run_dir, 'results.json')) as f:
          results = json.load(f)
        row['auroc'] = {s: m.get('auroc') for s, m in results.get('scores', {}).items()}
      except (OSError, ValueError) as e:
        row['status'], row['error'] = 'failed', f'unreadable results.json: {e}'
    elif row['status'] == 'failed':
      try:
        with open(os.path.join(run_dir, 'failed.json')) as f:
          failed = json.load(f)
        row['error'] = f'exit status {failed.get("returncode")}: {failed.get("error", "")}'
      except (OSError, ValueError):
        row['error'] = 'failed'
    rows.append(row)
  rows.sort(key=lambda r: (r['latent'], r['digit'], r['seed']))
  return rows


def summarize(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
  """(score names, one row per (latent, digit)) with mean/std AUROC over finished seeds."""
  scores = sorted({s for r in rows for s in r['auroc']})
  groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r['latent'], r['digit']), []).append(r)
  table = []
  for (latent, digit), runs in sorted(groups.items()):
    ok = [r for r in runs if r['status'] == 'done']
    entry = dict(latent=latent, digit=digit, seeds_done=len(ok), seeds=len(runs),
                 failed=' '.join(f's{r["seed"]}' for r in runs if r['status'] == 'failed'),
                 pending=' '.join(f's{r["seed"]}' for r in runs if r['status'] == 'pending'),
                 paper_auroc=PAPER_AUROC.get(latent, {}).get(digit))
    for s in scores:
      vals = np.array([r['auroc'][s] for r in ok if r['auroc'].get(s) is not None], float)
      entry[f'{s}_mean'] = float(vals.mean()) if vals.size else float('nan')
      entry[f'{s}_std'] = float(vals.std(ddof=1)) if vals.size > 1 else (0.0 if vals.size else
                                                                       float('nan'))
      entry[f'{s}_n'] = int(vals.size)
    table.append(entry)
  return scores, table


def _mean_rows(scores, table) -> list[dict[str, Any]]:
  """Per latent: the mean over digits (of the per-digit means) where every digit has one."""
  out = []
  for latent in sorted({t['latent'] for t in table}):
    part = [t for t in table if t['latent'] == latent]
    entry = dict(latent=latent, digit='mean', seeds_done=sum(t['seeds_done'] for t in part),
                 seeds=sum(t['seeds'] for t in part), failed='', pending='')
    papers = [t['paper_auroc'] for t in part]
    entry['paper_auroc'] = (float(np.mean(papers)) if all(p is not None for p in papers)
                            else None)
    for s in scores:
      means = [t[f'{s}_mean'] for t in part]
      entry[f'{s}_mean'] = float(np.mean(means)) if all(map(math.isfinite, means)) else math.nan
      entry[f'{s}_std'], entry[f'{s}_n'] = math.nan, 0
    out.append(entry)
  return out


def write_tables(out: str) -> tuple[str, str, str]:
  """Writes OUT/summary.csv, OUT/summary.md and OUT/runs.csv; returns the Markdown."""
  from vae_qc import workdir as wd  # pylint: disable=g-import-not-at-top
  rows = collect(out)
  if not rows:
    raise VaeQcError(f'{out} holds no sweep ({PLAN_FILE}) and no run with results.json.')
  scores, table = summarize(rows)
  means = _mean_rows(scores, table)
  header = ['latent', 'digit', 'seeds_done', 'seeds', 'failed', 'pending']
  header += [f'{s}_{k}' for s in scores for k in ('mean', 'std')] + ['paper_auroc']
  num = lambda v: '' if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
  csv_path = os.path.join(out, 'summary.csv')
  wd.write_csv(csv_path, header, ([num(t.get(h)) for h in header] for t in table + means))
  runs_header = ['name', 'digit', 'latent', 'seed', 'status', 'error'] + [
      f'{s}_auroc' for s in scores]
  wd.write_csv(os.path.join(out, 'runs.csv'), runs_header,
               ([r['name'], r['digit'], r['latent'], r['seed'], r['status'], r['error']]
                + [num(r['auroc'].get(s)) for s in scores] for r in rows))

  lines = [f'# Sweep {out}: image AUROC, mean ± std over seeds', '',
           f'{len(rows)} runs: {sum(r["status"] == "done" for r in rows)} done, '
           f'{sum(r["status"] == "failed" for r in rows)} failed, '
           f'{sum(r["status"] == "pending" for r in rows)} pending.', '',
           '| latent | digit | seeds | ' + ' | '.join(scores) + ' | paper | notes |',
           '|---|---|---|' + '---|' * len(scores) + '---|---|']
  for t in table + means:
    notes = '; '.join(x for x in (f'failed {t["failed"]}' if t['failed'] else '',
                                  f'pending {t["pending"]}' if t['pending'] else '') if x)
    paper = '' if t['paper_auroc'] is None else f'{t["paper_auroc"]:.2f}'
    cells = [_fmt(t[f'{s}_mean'], t[f'{s}_std'], t[f'{s}_n']) or '–' for s in scores]
    digit = f'**{t["digit"]}**' if t['digit'] == 'mean' else str(t['digit'])
    lines.append(f'| {t["latent"]} | {digit} | {t["seeds_done"]}/{t["seeds"]} | '
                 + ' | '.join(cells) + f' | {paper} | {notes} |')
  failed = [r for r in rows if r['status'] == 'failed']
  if failed:
    lines += ['', '## Failed runs', '']
    lines += [f'- `{r["name"]}`: {r["error"] or "failed"} (log: {r["name"]}/log.txt)'
              for r in failed]
  lines += ['', 'Paper: Tonnaer et al. (2019), latent 2 (no latent-32 values given here). '
            '"mean" rows: mean over digits of the per-digit means.', '']
  markdown = '\n'.join(lines)
  md_path = os.path.join(out, 'summary.md')
  wd.atomic_write(md_path, markdown)
  return csv_path, md_path, markdown


# ------------------------------------------------------------------------------------- CLI
def _add_grid_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--digits', default='0-9', help='anomalous digits, e.g. 0-9 or 0,3,7')
  p.add_argument('--seeds', default='0', help='training seeds (config.seed), e.g. 0-4')
  p.add_argument('--latents', default='2', help='latent sizes, e.g. 2,32')
  p.add_argument('--out', default='runs/sweep', help='sweep folder (one sub-folder per run)')
  p.add_argument('--script', default=DEFAULT_SCRIPT)
  p.add_argument('--config', default=DEFAULT_CONFIG)
  p.add_argument('--allow_changed_args', action='store_true',
                 help='mix runs made with other extra arguments into this sweep folder')


def _prepare(args, extra) -> tuple[dict[str, Any], list[str]]:
  check_extra_args(args.config, extra)
  runs = make_runs(parse_ints(args.digits, 'digits'), parse_ints(args.latents, 'latents'),
                   parse_ints(args.seeds, 'seeds'))
  os.makedirs(args.out, exist_ok=True)
  plan = write_plan(args.out, runs, extra, args.script, args.config, args.allow_changed_args)
  return plan, [r.name for r in runs]


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  parser = argparse.ArgumentParser(prog='python -m vae_qc.sweep', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='cmd', required=True)
  p_run = sub.add_parser('run', help='run the sweep here, P runs at a time, then aggregate')
  _add_grid_args(p_run)
  p_run.add_argument('--parallel', type=int, default=1, help='runs at a time')
  p_slurm = sub.add_parser('slurm', help='print (or --submit) a SLURM array script')
  _add_grid_args(p_slurm)
  p_slurm.add_argument('--submit', action='store_true', help='write the script and sbatch it')
  p_slurm.add_argument('--partition', default='')
  p_slurm.add_argument('--account', default='')
  p_slurm.add_argument('--time', default='04:00:00', help='time limit of one run')
  p_slurm.add_argument('--gpus_per_run', type=int, default=1, help='0: CPU only')
  p_slurm.add_argument('--gres', default='', help='e.g. gpu:1 (instead of --gpus)')
  p_slurm.add_argument('--tasks_per_run', type=int, default=1,
                       help='processes per run (multi-GPU / multi-node data parallel)')
  p_slurm.add_argument('--cpus_per_task', type=int, default=4)
  p_slurm.add_argument('--mem', default='')
  p_slurm.add_argument('--max_concurrent', type=int, default=0, help='array %%N limit')
  p_slurm.add_argument('--setup', default='',
                       help='shell line run before each run, e.g. "module load cuda"')
  p_one = sub.add_parser('run-one', help='run one run of a sweep (a SLURM array task)')
  p_one.add_argument('out')
  p_one.add_argument('index', type=int)
  p_agg = sub.add_parser('aggregate', help='write OUT/summary.{csv,md} and OUT/runs.csv')
  p_agg.add_argument('out')
  args = parser.parse_args(argv)
  if extra and args.cmd not in ('run', 'slurm'):
    parser.error(f'extra arguments after -- only apply to run and slurm, got {extra}')
  try:
    if args.cmd == 'aggregate':
      csv_path, md_path, markdown = write_tables(args.out)
      print(markdown)
      print(f'wrote {csv_path}, {md_path} and {os.path.join(args.out, "runs.csv")}')
      return 0
    if args.cmd == 'run-one':
      return run_one(args.out, args.index)
    plan, names = _prepare(args, extra)
    if args.cmd == 'run':
      if args.parallel < 1:
        raise ConfigError(f'--parallel must be >= 1, got {args.parallel}.')
      outcome = run_local(args.out, plan, names, args.parallel)
      csv_path, md_path, markdown = write_tables(args.out)
      print(markdown)
      print(f'wrote {csv_path} and {md_path}')
      failed = sorted(n for n, o in outcome.items() if o == 'failed')
      if failed:
        print(f'{len(failed)} run(s) failed: {", ".join(failed)}; re-run the same command to '
              'retry them (finished runs are skipped).', file=sys.stderr)
        return 1
      return 0
    index = {r['name']: i for i, r in enumerate(plan['runs'])}
    todo = [index[n] for n in names if status(os.path.join(args.out, n)) != 'done']
    script = slurm_script(args.out, plan, todo, partition=args.partition, account=args.account,
                          time_limit=args.time, gpus_per_run=args.gpus_per_run,
                          tasks_per_run=args.tasks_per_run, cpus_per_task=args.cpus_per_task,
                          mem=args.mem, max_concurrent=args.max_concurrent, setup=args.setup,
                          gres=args.gres)
    if not args.submit:
      print(script, end='')
      return 0
    path = os.path.join(args.out, 'sweep.sbatch')
    os.makedirs(os.path.join(args.out, 'slurm'), exist_ok=True)
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
    print(f'{len(todo)} runs submitted ({path}); when they finish: python -m vae_qc.sweep '
          f'aggregate {args.out}')
    return 0
  except VaeQcError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
