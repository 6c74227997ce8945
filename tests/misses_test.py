"""vae_qc.misses.by_change: the image AUROC per defect kind by visible change, against sklearn."""
import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vae_qc import misses
from vae_qc.errors import DataError


def _run(tmp_path, with_table=True):
  root, workdir = tmp_path / 'data', tmp_path / 'run'
  root.mkdir()
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps({'data': {'root': str(root)}}))
  rng = np.random.default_rng(0)
  rows = ['id,label,group,map_topk_logratio,neg_elbo']
  table = ['split,id,kind,row,col,mask_area,mean_change']
  for i in range(20):
    rows.append(f'good/{i:03d}.png,0,good,{rng.normal():.6f},{rng.normal():.6f}')
    table.append(f'test,good/{i:03d}.png,good,0,{i},,')
    table.append(f'train,smudge/{i:03d}.png,smudge,0,{i},0.01,99')  # another split: not read
  for kind in ('smudge', 'hole'):
    for i in range(8):
      change = 0.5 + i  # 0.5 .. 7.5 grey levels; the faint ones score like good images
      score = rng.normal() + (0 if change < 2 else 2)
      rows.append(f'{kind}/{i:03d}.png,1,{kind},{score:.6f},0')
      table.append(f'test,{kind}/{i:03d}.png,{kind},0,{i},0.01,{change:.3f}')
  (workdir / 'scores.csv').write_text('\n'.join(rows) + '\n')
  if with_table:
    (root / 'crops.csv').write_text('\n'.join(table) + '\n')
  return str(workdir), rows, table


def test_by_change_matches_sklearn_on_all_and_on_the_visible_defects(tmp_path):
  workdir, rows, table = _run(tmp_path)
  parsed = [r.split(',') for r in rows[1:]]
  change = {c[1]: float(c[6]) for c in (r.split(',') for r in table[1:])
            if c[0] == 'test' and c[6]}
  good = [float(r[3]) for r in parsed if r[1] == '0']
  result = {r['kind']: r for r in misses.by_change(workdir, 'map_topk_logratio', faint=2.0)}
  assert sorted(result) == ['hole', 'smudge']
  for kind, r in result.items():
    bad = [(float(p[3]), change[p[0]]) for p in parsed if p[2] == kind]
    for subset, key in ((bad, 'auroc'), ([b for b in bad if b[1] >= 2], 'auroc_visible')):
      expected = roc_auc_score([0] * len(good) + [1] * len(subset),
                               good + [s for s, _ in subset])
      assert r[key] == pytest.approx(expected)
    assert r['n'] == 8 and r['n_faint'] == 2  # changes 0.5 and 1.5
    assert r['faintest'] == f'{kind}/000.png' and r['faintest_change'] == pytest.approx(0.5)
    assert r['faintest_above_good'] == pytest.approx(np.mean(np.array(good) < bad[0][0]))


def test_by_change_errors_name_what_is_missing(tmp_path):
  workdir, _, _ = _run(tmp_path, with_table=False)
  with pytest.raises(DataError, match='no crops.csv.*photo_defects'):
    misses.by_change(workdir, 'map_topk_logratio')
  (tmp_path / 'data' / 'crops.csv').write_text('split,id,kind,row,col,mask_area,mean_change\n')
  with pytest.raises(DataError, match='does not list'):
    misses.by_change(workdir, 'map_topk_logratio')
  with pytest.raises(DataError, match="not scored with 'latent_nll'"):
    misses.by_change(workdir, 'latent_nll')
  os.remove(os.path.join(workdir, 'scores.csv'))
  with pytest.raises(DataError, match='no scores.csv'):
    misses.by_change(workdir, 'map_topk_logratio')
