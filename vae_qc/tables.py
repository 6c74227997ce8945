"""Tables of a sweep's results: every run's results.json into one table per (latent, digit).

A sweep folder ``OUT`` holds ``OUT/sweep.json`` (the plan: one entry per run with its name,
digit, latent and seed) and one run folder per run, ``OUT/<name>/``; a run is finished when
its ``results.json`` exists, failed when it left ``failed.json`` and preempted (state saved,
resumable) when it left ``preempted.json``. Run folders not in the
plan but holding results.json and config.json are read too.

:func:`write_tables` writes ``OUT/summary.csv`` and ``OUT/summary.md`` (per digit and latent:
mean ± std over seeds of every score's AUROC, next to a reference AUROC such as the paper's)
and ``OUT/runs.csv`` (one row per run, with its status). ``experiments/sweep.py`` runs sweeps.

Two splits are tabled: ``test`` (results.json's scores: the figures to report) and
``validation`` (results.json's validation scores, where the runs have a validation set: the
figures to choose settings on). :func:`recommend` picks a score on validation only. Runs of
the same (latent, digit) and different seeds form an ensemble: :func:`waic` adds its score
``waic_ensemble`` (Choi et al., 2018) from the runs' per-image scores.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from vae_qc import metrics
from vae_qc import workdir as wd
from vae_qc.errors import VaeQcError

PLAN_FILE = 'sweep.json'

# {latent: {digit: AUROC}} of a reference (e.g. the paper), shown next to the means.
Reference = Mapping[int, Mapping[int, float]]


def plan_path(out: str) -> str:
  return os.path.join(out, PLAN_FILE)


def load_plan(out: str) -> dict[str, Any] | None:
  path = plan_path(out)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def status(run_dir: str) -> str:
  """'done' (results.json), 'failed' (failed.json), 'preempted' (preempted.json) or
  'pending'."""
  if os.path.exists(os.path.join(run_dir, 'results.json')):
    return 'done'
  if os.path.exists(os.path.join(run_dir, 'failed.json')):
    return 'failed'
  if os.path.exists(os.path.join(run_dir, 'preempted.json')):
    return 'preempted'
  return 'pending'


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
               status=status(run_dir), error='', auroc={}, val_auroc={})
    if row['status'] == 'done':
      try:
        with open(os.path.join(run_dir, 'results.json')) as f:
          results = json.load(f)
        row['auroc'] = {s: m.get('auroc') for s, m in results.get('scores', {}).items()}
        row['val_auroc'] = {s: m.get('auroc') for s, m in
                            results.get('validation', {}).get('scores', {}).items()}
      except (OSError, ValueError) as e:
        row['status'], row['error'] = 'failed', f'unreadable results.json: {e}'
    elif row['status'] == 'failed':
      try:
        with open(os.path.join(run_dir, 'failed.json')) as f:
          failed = json.load(f)
        row['error'] = f'exit status {failed.get("returncode")}: {failed.get("error", "")}'
      except (OSError, ValueError):
        row['error'] = 'failed'
    elif row['status'] == 'preempted':
      row['error'] = 'preempted (state saved): re-run the sweep to resume'
    rows.append(row)
  rows.sort(key=lambda r: (r['latent'], r['digit'], r['seed']))
  return rows


def summarize(rows: Sequence[dict[str, Any]], reference: Reference | None = None,
              split: str = 'test') -> tuple[list[str], list[dict[str, Any]]]:
  """(score names, one row per (latent, digit)) with mean/std AUROC over finished seeds and
  the ``reference`` AUROC (``paper_auroc``; None where it has none). ``split``: 'test' or
  'validation'."""
  reference = reference or {}
  key = 'auroc' if split == 'test' else 'val_auroc'
  rows = [dict(r, auroc=r.get(key, {})) for r in rows]
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
                 preempted=' '.join(f's{r["seed"]}' for r in runs
                                    if r['status'] == 'preempted'),
                 paper_auroc=reference.get(latent, {}).get(digit))
    for s in scores:
      vals = np.array([r['auroc'][s] for r in ok if r['auroc'].get(s) is not None], float)
      entry[f'{s}_mean'] = float(vals.mean()) if vals.size else float('nan')
      entry[f'{s}_std'] = float(vals.std(ddof=1)) if vals.size > 1 else (0.0 if vals.size else
                                                                       float('nan'))
      entry[f'{s}_n'] = int(vals.size)
      entry[f'{s}_by_seed'] = {r['seed']: r['auroc'][s] for r in ok
                               if r['auroc'].get(s) is not None}
    table.append(entry)
  return scores, table


def _mean_rows(scores, table) -> list[dict[str, Any]]:
  """Per latent: the mean over digits (of the per-digit means) where every digit has one; its
  std is over seeds (of each seed's mean over digits) where every digit has the same seeds."""
  out = []
  for latent in sorted({t['latent'] for t in table}):
    part = [t for t in table if t['latent'] == latent]
    entry = dict(latent=latent, digit='mean', seeds_done=sum(t['seeds_done'] for t in part),
                 seeds=sum(t['seeds'] for t in part), failed='', pending='', preempted='')
    papers = [t['paper_auroc'] for t in part]
    entry['paper_auroc'] = (float(np.mean(papers)) if all(p is not None for p in papers)
                            else None)
    for s in scores:
      means = [t[f'{s}_mean'] for t in part]
      entry[f'{s}_mean'] = float(np.mean(means)) if all(map(math.isfinite, means)) else math.nan
      entry[f'{s}_min'] = float(np.min(means)) if all(map(math.isfinite, means)) else math.nan
      entry[f'{s}_std'], entry[f'{s}_n'] = math.nan, 0
      seeds = [set(t.get(f'{s}_by_seed', {})) for t in part]
      common = sorted(set.intersection(*seeds)) if seeds else []
      if len(common) > 1 and all(map(math.isfinite, means)):
        per_seed = [np.mean([t[f'{s}_by_seed'][seed] for t in part]) for seed in common]
        entry[f'{s}_std'], entry[f'{s}_n'] = float(np.std(per_seed, ddof=1)), len(common)
    out.append(entry)
  return out


def recommend(table_val, means_val, floor: float = 0.70) -> dict[int, str]:
  """{latent: the score with the best validation mean AUROC over digits, among those with no
  digit below ``floor`` (or the best mean if none is)}: chosen on validation only."""
  out = {}
  for m in means_val:
    scores = [k[:-5] for k in m if k.endswith('_mean') and math.isfinite(m[k])]
    if not scores:
      continue
    ok = [s for s in scores if m[f'{s}_min'] >= floor] or scores
    out[m['latent']] = max(ok, key=lambda s: m[f'{s}_mean'])
  return out


def _read_csv_scores(path: str, column: str) -> dict[str, tuple[int, float]] | None:
  try:
    with open(path) as f:
      rows = list(csv.DictReader(f))
  except OSError:
    return None
  if not rows or column not in rows[0]:
    return None
  return {r['id']: (int(r['label']), float(r[column])) for r in rows}


def waic(out: str, rows: Sequence[dict[str, Any]], split: str = 'test',
         column: str | None = None) -> dict[tuple[int, int], dict[str, float]]:
  """The seed ensemble's WAIC score (Choi et al., 2018) per (latent, digit):

    score(x) = −(mean_m log p_m(x) − var_m log p_m(x)) = mean_m s_m(x) + var_m s_m(x),

  s_m = −log p_m(x) of run m (``neg_log_px``, else ``neg_elbo``, from scores.csv or
  val_scores.csv), over the M >= 2 finished seeds: a density that the models disagree on is
  less trusted. Returns {(latent, digit): {'auroc', 'n_models', 'score'}}.
  """
  file = 'scores.csv' if split == 'test' else 'val_scores.csv'
  groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
  for r in rows:
    if r['status'] == 'done':
      groups.setdefault((r['latent'], r['digit']), []).append(r)
  result = {}
  for key, runs in sorted(groups.items()):
    if len(runs) < 2:
      continue
    for col in ([column] if column else ['neg_log_px', 'neg_elbo']):
      per_run = [_read_csv_scores(os.path.join(out, r['name'], file), col) for r in runs]
      if all(p is not None for p in per_run):
        break
    else:
      continue
    ids = sorted(set.intersection(*(set(p) for p in per_run)))
    if not ids:
      continue
    values = np.array([[p[i][1] for i in ids] for p in per_run])  # [M, N]
    labels = np.array([per_run[0][i][0] for i in ids])
    if len(set(labels)) < 2:
      continue
    score = values.mean(0) + values.var(0)
    result[key] = {'auroc': metrics.auroc(score, labels), 'n_models': len(runs), 'score': col}
  return result


def add_waic(table, ensemble: dict[tuple[int, int], dict[str, float]], scores: list[str]
             ) -> list[str]:
  """Adds the column 'waic_ensemble' (one ensemble per digit: no std) to ``table``."""
  if not ensemble:
    return scores
  for t in table:
    e = ensemble.get((t['latent'], t['digit']))
    t['waic_ensemble_mean'] = e['auroc'] if e else math.nan
    t['waic_ensemble_std'], t['waic_ensemble_n'] = math.nan, 1 if e else 0
  return scores + ['waic_ensemble']


mean_rows = _mean_rows  # public: the report page (vae_qc.report) shows the same rows


def _markdown_table(title: str, scores, table, means) -> list[str]:
  lines = [title, '', '| latent | digit | seeds | ' + ' | '.join(scores) + ' | paper | notes |',
           '|---|---|---|' + '---|' * len(scores) + '---|---|']
  for t in table + means:
    notes = '; '.join(x for x in (f'failed {t["failed"]}' if t['failed'] else '',
                                  f'preempted {t["preempted"]}' if t['preempted'] else '',
                                  f'pending {t["pending"]}' if t['pending'] else '') if x)
    paper = '' if t['paper_auroc'] is None else f'{t["paper_auroc"]:.2f}'
    cells = [_fmt(t[f'{s}_mean'], t[f'{s}_std'], t[f'{s}_n']) or '–' for s in scores]
    digit = f'**{t["digit"]}**' if t['digit'] == 'mean' else str(t['digit'])
    lines.append(f'| {t["latent"]} | {digit} | {t["seeds_done"]}/{t["seeds"]} | '
                 + ' | '.join(cells) + f' | {paper} | {notes} |')
    if t['digit'] == 'mean':
      worst = [f'{t[f"{s}_min"]:.3f}' if math.isfinite(t.get(f'{s}_min', math.nan)) else '–'
               for s in scores]
      lines.append(f'| {t["latent"]} | worst digit | | ' + ' | '.join(worst) + ' | | |')
  return lines


def write_tables(out: str, reference: Reference | None = None,
                 reference_note: str = '') -> tuple[str, str, str]:
  """Writes OUT/summary.csv, OUT/summary.md and OUT/runs.csv.

  The Markdown has the test table (mean ± std over seeds per digit; the mean row's ± is over
  seeds of the mean over digits; the worst digit's mean), the seed ensemble's WAIC column
  where a digit has >= 2 seeds, the validation table when the runs have a validation set, and
  the score recommended on validation (:func:`recommend`).

  Args:
    out: the sweep folder.
    reference: {latent: {digit: AUROC}} for the ``paper`` column (e.g. the paper's).
    reference_note: what the reference is, a sentence under the Markdown table.

  Returns:
    (path of summary.csv, path of summary.md, the Markdown).
  """
  rows = collect(out)
  if not rows:
    raise VaeQcError(f'{out} holds no sweep ({PLAN_FILE}) and no run with results.json.')
  scores, table = summarize(rows, reference)
  scores = add_waic(table, waic(out, rows), scores)
  means = _mean_rows(scores, table)
  header = ['split', 'latent', 'digit', 'seeds_done', 'seeds', 'failed', 'preempted', 'pending']
  header += [f'{s}_{k}' for s in scores for k in ('mean', 'std')] + ['paper_auroc']
  num = lambda v: '' if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
  csv_rows = [['test'] + [num(t.get(h)) for h in header[1:]] for t in table + means]
  val_scores, val_table = summarize(rows, reference, 'validation')
  val_means, recommended = [], {}
  if val_scores:
    val_scores = add_waic(val_table, waic(out, rows, 'validation'), val_scores)
    val_means = _mean_rows(val_scores, val_table)
    recommended = recommend(val_table, val_means)
    csv_rows += [['validation'] + [num(t.get(h)) for h in header[1:]]
                 for t in val_table + val_means]
  csv_path = os.path.join(out, 'summary.csv')
  wd.write_csv(csv_path, header, csv_rows)
  runs_header = ['name', 'digit', 'latent', 'seed', 'status', 'error'] + [
      f'{s}_auroc' for s in scores if s != 'waic_ensemble'] + [
      f'{s}_val_auroc' for s in val_scores if s != 'waic_ensemble']
  wd.write_csv(os.path.join(out, 'runs.csv'), runs_header,
               ([r['name'], r['digit'], r['latent'], r['seed'], r['status'], r['error']]
                + [num(r['auroc'].get(s)) for s in scores if s != 'waic_ensemble']
                + [num(r['val_auroc'].get(s)) for s in val_scores if s != 'waic_ensemble']
                for r in rows))

  lines = [f'# Sweep {out}: image AUROC, mean ± std over seeds', '',
           f'{len(rows)} runs: {sum(r["status"] == "done" for r in rows)} done, '
           f'{sum(r["status"] == "failed" for r in rows)} failed, '
           f'{sum(r["status"] == "preempted" for r in rows)} preempted, '
           f'{sum(r["status"] == "pending" for r in rows)} pending.', '']
  for latent, name in sorted(recommended.items()):
    lines.append(f'Recommended score for latent {latent}, chosen on the validation set (best '
                 f'mean AUROC with no digit below 0.70 if any has none): **{name}**.')
  if recommended:
    lines.append('')
  lines += _markdown_table('## Test', scores, table, means)
  if val_scores:
    lines += [''] + _markdown_table('## Validation (settings are chosen here, never on test)',
                                    val_scores, val_table, val_means)
  failed = [r for r in rows if r['status'] == 'failed']
  if failed:
    lines += ['', '## Failed runs', '']
    lines += [f'- `{r["name"]}`: {r["error"] or "failed"} (log: {r["name"]}/log.txt)'
              for r in failed]
  lines += ['', (reference_note + ' ' if reference_note else '')
            + '"mean" rows: mean over digits of the per-digit means; their ± is the std over '
            'seeds of each seed\'s mean over digits. waic_ensemble: one ensemble of the seeds '
            'per digit (mean + variance of −log p(x) over the seeds\' models).', '']
  markdown = '\n'.join(lines)
  md_path = os.path.join(out, 'summary.md')
  wd.atomic_write(md_path, markdown)
  return csv_path, md_path, markdown
