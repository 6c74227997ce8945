"""``report.html``: one self-contained page per run, per prediction and per sweep.

The pages only read what the study, ``predict`` and the sweep tables already computed
(``results.json``, ``config.json``, ``scores.csv``, ``plots/*.png``, the sweep's rows): no
number on a page is computed twice. Images are PNG files beside the page (``plots/``,
``report_files/``), linked by relative paths; nothing is loaded from the network.

* :func:`write_study_report` (``WORKDIR/report.html``): verdicts on the test set, the scores'
  AUROC / AUPRC / F1-max / FPR@95 and bits/dim, the threshold and what it gives, pixel and
  per-defect figures (print study), the ROC / histogram figures, the gallery of the most and
  least anomalous images, per-image verdicts with maps (when the study made maps), the data
  split and the config.
* :func:`write_predict_report` (``OUT/report.html``): verdicts first, one row per image with
  its input and anomaly map.
* :func:`write_sweep_report` (``OUT/report.html``): per digit and latent, every score's mean
  AUROC next to the paper's, and every run with its status.
"""
from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from vae_qc import progress
from vae_qc import workdir as wd

REPORT = 'report.html'

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
  color:#1d1d1f;max-width:1280px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px;
  border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:middle}
th{background:#f3f3f5} td.l,th.l{text-align:left}
.bad{color:#b00020;font-weight:600} .ok{color:#176f2c}
.big{font-size:1.2em;margin:8px 0} .muted{color:#666;font-size:12px}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#444}
img.thumb{height:112px;image-rendering:pixelated}
details{margin:8px 0}
"""


# ----------------------------------------------------------------------------- HTML pieces
def _e(value: Any) -> str:
  return html.escape(str(value))


def _num(value: Any, digits: int = 3) -> str:
  if value is None:
    return '–'
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  try:
    f = float(value)
  except (TypeError, ValueError):
    return _e(value)
  if not math.isfinite(f):
    return '–'
  return f'{f:.{digits}f}' if abs(f) < 1e4 else f'{f:.4g}'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1,
          raw: bool = False, table_id: str = '') -> str:
  """An HTML table; the first ``left`` columns left-aligned. Cells are escaped unless
  ``raw`` (then they are HTML already)."""
  cls = lambda j: ' class="l"' if j < left else ''
  cell = (lambda v: str(v)) if raw else _e
  head = ''.join(f'<th{cls(j)}>{_e(h)}</th>' for j, h in enumerate(header))
  body = ''.join('<tr>' + ''.join(f'<td{cls(j)}>{cell(v)}</td>' for j, v in enumerate(r))
                 + '</tr>' for r in rows)
  ident = f' id="{_e(table_id)}"' if table_id else ''
  return f'<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure(src: str, caption: str, width: int | None = None) -> str:
  style = f' style="max-width:{width}px"' if width else ''
  return (f'<figure><img src="{_e(src)}" alt="{_e(caption)}"{style}>'
          f'<figcaption>{_e(caption)}</figcaption></figure>')


def page(title: str, body: str) -> str:
  """A whole page: no script, no external resource."""
  return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n'
          f'<h1>{_e(title)}</h1>\n{body}\n</body></html>\n')


def _flatten(d: Mapping[str, Any], prefix: str = '') -> list[tuple[str, Any]]:
  out = []
  for k, v in d.items():
    if isinstance(v, Mapping):
      out += _flatten(v, f'{prefix}{k}.')
    else:
      out.append((f'{prefix}{k}', v))
  return out


def _value_text(v: Any) -> str:
  if isinstance(v, float):
    return _num(v, 4)
  if isinstance(v, (list, tuple)):
    return json.dumps(v) if len(json.dumps(v)) < 200 else json.dumps(v)[:200] + ' …'
  return str(v)


# --------------------------------------------------------------------------- thumbnails
def _gray_rgb(image: np.ndarray) -> np.ndarray:
  """[H, W, C] in [0, 1] -> [H, W, 3] uint8."""
  im = np.clip(np.asarray(image, np.float32), 0, 1)
  im = np.repeat(im, 3, -1) if im.shape[-1] == 1 else im[..., :3]
  return (im * 255).astype(np.uint8)


def _heat(amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """[H, W] -> [H, W, 3] uint8 (matplotlib's inferno)."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top  # heavy, only here
  v = np.clip((np.asarray(amap, np.float32) - lo) / max(hi - lo, 1e-12), 0, 1)
  return (colormaps['inferno'](v)[..., :3] * 255).astype(np.uint8)


def map_range(maps: Sequence[np.ndarray]) -> tuple[float, float]:
  """One colour scale for all maps: the 1st and 99.5th percentiles of their pixels."""
  sample = np.concatenate([np.asarray(m, np.float32).ravel()[::max(1, np.size(m) // 20000)]
                           for m in maps])
  lo, hi = np.percentile(sample, [1, 99.5])
  return float(lo), float(hi)


def thumbnail(image: np.ndarray, amap: np.ndarray, lo: float, hi: float,
              threshold: float | None = None, height: int = 112) -> Image.Image:
  """input | map (inferno) | input with the pixels at or above ``threshold`` in red.

  image [H, W, C] in [0, 1]; amap [H, W]. Small images are enlarged (nearest) to ``height``.
  """
  rgb = _gray_rgb(image)
  panels = [rgb, _heat(amap, lo, hi)]
  if threshold is not None:
    marked = rgb.copy()
    hot = np.asarray(amap) >= threshold
    marked[hot] = (0.4 * marked[hot] + 0.6 * np.array([230, 0, 0])).astype(np.uint8)
    panels.append(marked)
  gap = np.full((rgb.shape[0], max(1, rgb.shape[1] // 32), 3), 255, np.uint8)
  strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
  im = Image.fromarray(strip)
  scale = height / strip.shape[0]
  resample = Image.NEAREST if scale > 1 else Image.BILINEAR
  return im.resize((max(1, round(strip.shape[1] * scale)), height), resample)


def _thumb_name(image_id: str) -> str:
  return os.path.splitext(str(image_id))[0].replace(os.sep, '__').replace('/', '__') + '.png'


def write_thumbnails(folder: str, ids: Sequence[str], images: Sequence[np.ndarray],
                     maps: Sequence[np.ndarray], threshold: float | None = None
                     ) -> dict[str, str]:
  """One PNG per image (:func:`thumbnail`) in ``folder``; returns {id: file name}."""
  os.makedirs(folder, exist_ok=True)
  lo, hi = map_range(maps)
  names = {}
  for i, image, amap in progress.track(zip(ids, images, maps), len(ids), 'pictures'):
    name = _thumb_name(i)
    thumbnail(image, amap, lo, hi, threshold).save(os.path.join(folder, name))
    names[str(i)] = name
  return names


def _read_csv(path: str) -> list[dict[str, str]]:
  import csv  # pylint: disable=g-import-not-at-top
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the study
def _scores_table(results: Mapping[str, Any]) -> str:
  bpd = results.get('bits_per_dim', {})
  rows = []
  for name, m in results['scores'].items():
    b = bpd.get(name, {})
    rows.append([name, _num(m.get('auroc')), _num(m.get('auprc')), _num(m.get('f1_max')),
                 _num(m.get('fpr_at_95_tpr')), _num(b.get('normal')), _num(b.get('anomalous'))])
  return table(['score', 'AUROC', 'AUPRC', 'F1-max', 'FPR@95%TPR', 'bits/dim normal',
                'bits/dim anomalous'], rows, table_id='scores')


def _threshold_html(thr: Mapping[str, Any] | None) -> str:
  if not thr:
    return '<p>No decision threshold was configured (config.threshold.method = none).</p>'
  v, at = thr['validation'], thr.get('test_at_threshold', {})
  text = (f'<p>Images with <b>{_e(thr["score"])} ≥ {_num(thr["value"], 4)}</b> are called '
          f'defective ({_e(thr["method"])}'
          + (f', quantile {_num(thr.get("quantile"))}' if thr['method'] == 'normal_quantile'
             else '')
          + f'; chosen on {v["n"]} validation images from the {_e(v["source"])} side, '
          f'{v["n_anomalous"]} of them anomalous).</p>')
  rows = [[f'test images not used to choose it ({thr.get("test_at_threshold_n", "?")})',
           _num(at.get('precision')), _num(at.get('recall')), _num(at.get('f1')),
           _num(at.get('fpr'))]]
  return text + table(['at the threshold', 'precision', 'recall', 'F1', 'false-positive rate'],
                      rows, table_id='threshold')


def _per_defect_html(results: Mapping[str, Any]) -> str:
  per = results.get('per_defect')
  if not per:
    return ''
  names = list(results['scores'])
  has_pixel = any('pixel' in d for d in per.values())
  header = ['defect'] + [f'image AUROC {n}' for n in names]
  if has_pixel:
    header += ['pixel AUROC', 'AUPRO']
  rows = []
  for g, d in per.items():
    row = [g] + [_num(d.get('image', {}).get(n, {}).get('auroc')) for n in names]
    if has_pixel:
      row += [_num(d.get('pixel', {}).get('auroc')), _num(d.get('pixel', {}).get('aupro'))]
    rows.append(row)
  if 'pixel' in results:
    rows.append(['all'] + [_num(results['scores'][n]['auroc']) for n in names]
                + ([_num(results['pixel']['auroc']), _num(results['pixel']['aupro'])]
                   if has_pixel else []))
  return '<h2>Per defect type</h2>' + table(header, rows, table_id='per_defect')


def _image_table(rows: list[dict[str, str]], key: str, thumbs: Mapping[str, str],
                 thumb_dir: str, table_id: str) -> str:
  """Rows of scores.csv as a table, defective first, then by ``key`` (most anomalous first),
  each with its thumbnail (input | map | where)."""
  ordered = sorted(rows, key=lambda r: (-(int(r.get('verdict') or 0)), -float(r[key])))
  body = []
  for r in ordered:
    verdict = r.get('verdict')
    v_html = ('<span class="bad">defective</span>' if verdict == '1' else
              '<span class="ok">good</span>' if verdict == '0' else '–')
    img = (f'<img class="thumb" src="{_e(thumb_dir + "/" + thumbs[r["id"]])}" '
           f'alt="{_e(r["id"])}">' if r['id'] in thumbs else '')
    body.append([v_html, _e(r['id']), _e(r.get('group', '')), _e(r['label']),
                 _num(float(r[key]), 2), img])
  return table(['verdict', 'image', 'group', 'label', key, 'input | anomaly map | where (red)'],
               body, left=3, raw=True, table_id=table_id)


def _verdicts_html(rows: list[dict[str, str]], thr: Mapping[str, Any] | None,
                   thumbs: Mapping[str, str], thumb_dir: str, first: str) -> tuple[str, str]:
  """(the verdicts: counts and the images called defective; every test image), as HTML."""
  if not rows:
    return '', ''
  out = []
  key = (thr or {}).get('score') or first
  if thr and 'verdict' in rows[0]:
    flagged = [r for r in rows if r['verdict'] == '1']
    real = sum(r['label'] == '1' for r in flagged)
    out.append(f'<p class="big"><span class="bad">{len(flagged)} of {len(rows)}</span> test '
               f'images are called defective ({real} of them are labelled anomalous; '
               f'{sum(r["label"] == "1" for r in rows)} anomalous test images in all).</p>')
    if thumbs and flagged:
      out.append('<p>The images called defective: input | anomaly map | the pixels over the '
                 'pixel threshold in red (every test image is at the end of the page).</p>'
                 + _image_table(flagged, key, thumbs, thumb_dir, 'flagged'))
  every = ''
  if thumbs:
    every = ('<h2>Every test image</h2><p>Defective first, then most anomalous first.</p>'
             + _image_table(rows, key, thumbs, thumb_dir, 'verdicts'))
  return ''.join(out), every


def write_study_report(workdir: str) -> str:
  """Writes ``WORKDIR/report.html`` from the files the study wrote; returns its path."""
  results = wd.read_json(os.path.join(workdir, 'results.json'))
  config = wd.read_json(os.path.join(workdir, 'config.json'))
  csv_path = os.path.join(workdir, 'scores.csv')
  rows = _read_csv(csv_path) if os.path.exists(csv_path) else []
  thr = results.get('threshold')
  first = (thr or {}).get('score') or next(iter(results['scores']))
  thumbs_path = os.path.join(workdir, 'plots', 'images', 'index.json')
  thumbs = wd.read_json(thumbs_path) if os.path.exists(thumbs_path) else {}
  name = config.get('data', {}).get('name', 'study')
  parts = [f'<p class="muted">{_e(os.path.abspath(workdir))}: {results["n_normal"]} normal + '
           f'{results["n_anomalous"]} anomalous test images; scores are bigger = more '
           'anomalous. Files: <a href="results.json">results.json</a>, '
           '<a href="scores.csv">scores.csv</a>, <a href="config.json">config.json</a>.</p>']
  verdicts, every_image = _verdicts_html(rows, thr, thumbs, 'plots/images', first)
  parts.append('<h2>Verdicts</h2>' + _threshold_html(thr) + verdicts)
  parts.append('<h2>Scores on the test set</h2>' + _scores_table(results))
  if 'pixel' in results:
    p = results['pixel']
    parts.append(f'<p>Localisation ({_e(p["map"])} map, {p["n_images"]} images): pixel AUROC '
                 f'<b>{_num(p["auroc"])}</b>, AUPRO <b>{_num(p["aupro"])}</b>'
                 + (f'; pixel threshold {_num(p["threshold"]["value"], 4)} '
                    f'({_num(p["threshold"]["quantile"])}-quantile of normal validation '
                    'pixels)' if 'threshold' in p else '') + '.</p>')
  parts.append(_per_defect_html(results))
  plots = os.path.join(workdir, 'plots')
  figs = [(f, c) for f, c in (('roc.png', 'ROC curves'),
                              ('histograms.png', 'score histograms, normal vs anomalous'),
                              ('roc_per_defect.png', 'ROC per defect type'))
          if os.path.exists(os.path.join(plots, f))]
  parts.append('<h2>Figures</h2>' + ''.join(figure(f'plots/{f}', c) for f, c in figs))
  for f, c in (('localisation.png', 'the most and least anomalous test images: input, '
                'reconstruction, map with the true (green) and predicted (red) masks'),
               ('reconstructions.png', 'the least and most anomalous normal and anomalous test '
                'images: input, reconstruction, |difference|')):
    if os.path.exists(os.path.join(plots, f)):
      parts.append('<h2>Gallery</h2>' + figure(f'plots/{f}', c, 1200))
  info = results.get('data', {})
  skipped = info.get('skipped_files') or []
  parts.append('<h2>Data</h2>' + table(['field', 'value'], [
      (k, _value_text(v)) for k, v in _flatten({k: v for k, v in info.items()
                                                 if k != 'skipped_files'})], left=2,
      table_id='data'))
  if skipped:
    parts.append(f'<p class="bad">{len(skipped)} files were skipped:</p>' + table(
        ['file', 'reason'], [(s['path'], s['reason']) for s in skipped], left=2))
  run_rows = [(f'train.{k}', _value_text(v)) for k, v in results.get('train', {}).items()]
  run_rows += [(f'parallel.{k}', _value_text(v)) for k, v in results.get('parallel', {}).items()]
  evaluated = results.get('eval', {})
  run_rows += [('eval.seconds', _num(evaluated.get('seconds'), 1))]
  # the samples evaluation drew (a time budget's plan may set fewer than config.json's)
  run_rows += [(f'eval.{k}', _value_text(evaluated[k]))
               for k in ('map_samples', 'map_antithetic', 'elbo_samples')
               if k in evaluated]
  parts.append('<h2>Run</h2>' + table(['field', 'value'], run_rows, left=2))
  parts.append('<details><summary>Config (config.json)</summary>' + table(
      ['field', 'value'], [(k, _value_text(v)) for k, v in _flatten(config)], left=2,
      table_id='config') + '</details>')
  parts.append(every_image)
  path = os.path.join(workdir, REPORT)
  wd.atomic_write(path, page(f'vae-qc {name} study: {os.path.basename(os.path.abspath(workdir))}',
                             '\n'.join(p for p in parts if p)))
  return path


# --------------------------------------------------------------------------------- predict
def write_predict_report(out: str, summary: Mapping[str, Any], ids: Sequence[str],
                         values: Mapping[str, np.ndarray], verdicts: np.ndarray | None,
                         thumbs: Mapping[str, str], workdir: str) -> str:
  """Writes ``OUT/report.html`` for the images ``predict`` scored: the verdicts first, then
  one row per image (defective first, most anomalous first) with input | map | where."""
  thr = summary.get('threshold')
  key = (thr or {}).get('score') or next(iter(values))
  order = sorted(range(len(ids)), key=lambda j: (-(int(verdicts[j]) if verdicts is not None
                                                   else 0), -float(values[key][j])))
  parts = []
  if verdicts is not None:
    n_bad = int(np.sum(verdicts))
    parts.append(f'<p class="big"><span class="bad">{n_bad} of {len(ids)}</span> images are '
                 f'called defective ({_e(key)} ≥ {_num(thr["value"], 4)}, the run\'s '
                 f'{_e(thr["method"])} threshold).</p>')
  else:
    parts.append('<p class="big">The run has no decision threshold: images are ranked by '
                 f'{_e(key)}, most anomalous first.</p>')
  skipped = summary.get('skipped') or []
  if skipped:
    parts.append(f'<p class="bad">{len(skipped)} files could not be read:</p>'
                 + table(['file', 'reason'], [(s['path'], s['reason']) for s in skipped], left=2))
  names = list(values)
  body = []
  for j in order:
    i = ids[j]
    v_html = ('–' if verdicts is None else '<span class="bad">defective</span>'
              if verdicts[j] else '<span class="ok">good</span>')
    img = (f'<img class="thumb" src="report_files/{_e(thumbs[i])}" alt="{_e(i)}">'
           if i in thumbs else '')
    body.append([v_html, _e(i)] + [_num(values[n][j], 2) for n in names] + [img])
  parts.append(f'<h2>Images ({_e(summary.get("map", ""))} map: where the model finds the image '
               'unlikely)</h2>'
               + table(['verdict', 'image'] + names + ['input | map | where'], body, left=2,
                       raw=True, table_id='verdicts'))
  parts.append(f'<p class="muted">Run: {_e(os.path.abspath(workdir))}. Files: '
               '<a href="scores.csv">scores.csv</a>, <a href="summary.json">summary.json</a>, '
               'maps/*.png, maps.npz.</p>')
  path = os.path.join(out, REPORT)
  wd.atomic_write(path, page(f'vae-qc predictions: {len(ids)} images', '\n'.join(parts)))
  return path


# ---------------------------------------------------------------------------------- sweep
def write_sweep_report(out: str, reference: Mapping[int, Mapping[int, float]] | None = None,
                       reference_note: str = '') -> str:
  """Writes ``OUT/report.html`` from the sweep's rows (``vae_qc.tables``): per latent and
  digit, every score's mean AUROC over seeds next to ``reference``; the runs and their status;
  a figure of the per-digit AUROCs."""
  from vae_qc import tables  # pylint: disable=g-import-not-at-top
  from vae_qc import viz  # pylint: disable=g-import-not-at-top
  rows = tables.collect(out)
  scores, per_digit = tables.summarize(rows, reference)
  means = tables.mean_rows(scores, per_digit)
  fmt = lambda t, s: (_num(t[f'{s}_mean']) + (f' ± {_num(t[f"{s}_std"])}'
                                               if t[f'{s}_n'] > 1 else ''))
  body = [[str(t['latent']), str(t['digit']), f'{t["seeds_done"]}/{t["seeds"]}']
          + [fmt(t, s) for s in scores] + [_num(t['paper_auroc'], 2)] for t in per_digit + means]
  parts = [f'<p class="big">{len(rows)} runs: {sum(r["status"] == "done" for r in rows)} done, '
           f'{sum(r["status"] == "failed" for r in rows)} failed, '
           f'{sum(r["status"] == "pending" for r in rows)} pending.</p>',
           '<h2>Image AUROC per anomalous digit (mean ± std over seeds)</h2>',
           table(['latent', 'digit', 'seeds'] + scores + ['paper'], body, left=2,
                 table_id='per_digit'),
           f'<p class="muted">{_e(reference_note)} "mean" rows: mean over digits of the '
           'per-digit means.</p>']
  fig = os.path.join(out, 'plots', 'sweep_auroc.png')
  if per_digit and scores:
    viz.sweep_aurocs(per_digit, scores, fig)
    parts.append(figure('plots/sweep_auroc.png', 'AUROC per digit, each score and the paper'))
  run_rows = []
  for r in rows:
    link = os.path.join(r['name'], REPORT)
    name = (f'<a href="{_e(link)}">{_e(r["name"])}</a>'
            if os.path.exists(os.path.join(out, link)) else _e(r['name']))
    status = f'<span class="bad">{_e(r["status"])}</span>' if r['status'] == 'failed' else _e(
        r['status'])
    run_rows.append([name, str(r['digit']), str(r['latent']), str(r['seed']), status,
                     _e(r['error'])] + [_num(r['auroc'].get(s)) for s in scores])
  parts.append('<h2>Runs</h2>' + table(['run', 'digit', 'latent', 'seed', 'status', 'error']
                                       + [f'{s} AUROC' for s in scores], run_rows, left=1,
                                       raw=True, table_id='runs'))
  path = os.path.join(out, REPORT)
  wd.atomic_write(path, page(f'vae-qc sweep: {os.path.basename(os.path.abspath(out))}',
                             '\n'.join(parts)))
  return path
