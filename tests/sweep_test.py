"""experiments/sweep.py, vae_qc.tables and ``launch.sh sweep``: planning, running P at a
time, skipping finished runs, reporting failed ones, SLURM scripts and the aggregated tables.

Most tests run a fake study script (writes results.json in milliseconds); one end-to-end test
runs ``./launch.sh sweep`` on the real MNIST study with a tiny configuration.
"""
from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from experiments import sweep
from tests import report_test
from vae_qc import browser
from vae_qc.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'experiments', 'configs', 'mnist.py')

FAKE_STUDY = r'''
import json, os, sys
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
workdir = args['workdir']
digit, seed = int(args['config.data.anomalous_digit']), int(args['config.seed'])
latent = int(args['config.model.latent'])
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, 'calls'), 'a') as f:
  f.write(' '.join(sys.argv[1:]) + '\n')
if f'{digit}_{seed}' in os.environ.get('FAKE_PREEMPT', '').split(','):
  print('preempted: the fake study was preempted on purpose', file=sys.stderr)
  sys.exit(75)
if f'{digit}_{seed}' in os.environ.get('FAKE_FAIL', '').split(','):
  print('error: the fake study failed on purpose', file=sys.stderr)
  sys.exit(2)
with open(os.path.join(workdir, 'results.json'), 'w') as f:
  json.dump({'scores': {'neg_elbo': {'auroc': 0.5 + digit / 10 + seed / 100},
                        'kl': {'auroc': 0.25}}}, f)
'''


@pytest.fixture
def fake_study(tmp_path):
  path = tmp_path / 'fake_study.py'
  path.write_text(FAKE_STUDY)
  return str(path)


def _sweep(out, script, *args, extra=('--config.train.epochs=1',)):
  argv = ['run', '--digits', '0-1', '--seeds', '0,1', '--latents', '2', '--out', str(out),
          '--script', script, '--config', CONFIG, *args]
  return sweep.main(argv + (['--', *extra] if extra else []))


def _calls(out, name) -> list[str]:
  path = os.path.join(out, name, 'calls')
  return open(path).read().splitlines() if os.path.exists(path) else []


def _csv(path) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def test_parse_ints():
  assert sweep.parse_ints('0-9', 'digits') == list(range(10))
  assert sweep.parse_ints('7,0,3', 'digits') == [0, 3, 7]
  assert sweep.parse_ints('0-2,5, 2', 'seeds') == [0, 1, 2, 5]
  for bad in ('a', '3-1', '', '1-b'):
    with pytest.raises(ConfigError, match='--digits'):
      sweep.parse_ints(bad, 'digits')
  assert sweep._ranges([8, 0, 1, 2, 5, 7]) == '0-2,5,7-8'  # SLURM --array list
  with pytest.raises(ConfigError, match='not an MNIST digit'):
    sweep.make_runs([10], [2], [0])


def test_failed_run_is_reported_and_rerun_skips_finished_runs(tmp_path, fake_study,
                                                              monkeypatch, capsys):
  out = tmp_path / 'sweep'
  monkeypatch.setenv('FAKE_FAIL', '1_1')
  assert _sweep(out, fake_study, '--parallel', '2') == 1
  captured = capsys.readouterr()
  assert 'd1_z2_s1 failed' in captured.out and 'd1_z2_s1' in captured.err
  # Every run got its own flags and the extra arguments.
  assert _calls(out, 'd1_z2_s0')[0].endswith(
      '--config.data.anomalous_digit=1 --config.model.latent=2 --config.seed=0 '
      '--config.train.epochs=1')
  assert f'--workdir={out}/d1_z2_s0' in _calls(out, 'd1_z2_s0')[0]

  md = (out / 'summary.md').read_text()
  assert '4 runs: 3 done, 1 failed, 0 preempted, 0 pending.' in md
  assert '| 2 | 0 | 2/2 | 0.250 ± 0.000 | 0.505 ± 0.007 | 0.96 |  |' in md
  assert '| 2 | 1 | 1/2 | 0.250 | 0.600 | 0.73 | failed s1 |' in md
  assert '## Failed runs' in md and 'the fake study failed on purpose' in md
  rows = {(r['latent'], r['digit']): r for r in _csv(out / 'summary.csv')}
  assert rows['2', '1']['failed'] == 's1' and rows['2', '1']['seeds_done'] == '1'
  assert float(rows['2', '0']['neg_elbo_mean']) == pytest.approx(0.505)
  assert float(rows['2', '0']['neg_elbo_std']) == pytest.approx(0.00707, abs=1e-5)
  assert rows['2', '0']['paper_auroc'] == '0.96'
  assert rows['2', 'mean']['neg_elbo_mean'] != ''
  status = {r['name']: r['status'] for r in _csv(out / 'runs.csv')}
  assert status == {'d0_z2_s0': 'done', 'd0_z2_s1': 'done', 'd1_z2_s0': 'done',
                    'd1_z2_s1': 'failed'}

  # Re-running: finished runs are skipped, the failed one is retried.
  monkeypatch.delenv('FAKE_FAIL')
  assert _sweep(out, fake_study) == 0
  assert '4 runs, 3 finished already, 1 to run' in capsys.readouterr().out
  assert len(_calls(out, 'd0_z2_s0')) == 1 and len(_calls(out, 'd1_z2_s1')) == 2
  assert not (out / 'd1_z2_s1' / 'failed.json').exists()
  assert '4 runs: 4 done, 0 failed, 0 preempted, 0 pending.' in (out / 'summary.md').read_text()


def test_other_extra_arguments_need_a_new_out(tmp_path, fake_study, capsys):
  out = tmp_path / 'sweep'
  assert _sweep(out, fake_study) == 0
  assert _sweep(out, fake_study, extra=('--config.train.epochs=2',)) == 2
  assert 'Use a new --out' in capsys.readouterr().err


def test_unknown_override_fails_before_any_run(tmp_path, fake_study, capsys):
  out = tmp_path / 'sweep'
  assert _sweep(out, fake_study, extra=('--config.train.epoch=1',)) == 2
  err = capsys.readouterr().err
  assert "unknown config field 'config.train.epoch'" in err and 'epochs' in err
  assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith('d')]
  assert _sweep(out, fake_study, extra=('--config.seed=3',)) == 2
  assert 'set by the sweep' in capsys.readouterr().err


def test_slurm_script_holds_only_unfinished_runs(tmp_path, fake_study, capsys, monkeypatch):
  out = tmp_path / 'sweep'
  monkeypatch.setenv('FAKE_FAIL', '0_1,1_1')
  _sweep(out, fake_study)  # d0_z2_s1 and d1_z2_s1 fail
  capsys.readouterr()
  argv = ['slurm', '--digits', '0-1', '--seeds', '0,1', '--latents', '2', '--out', str(out),
          '--script', fake_study, '--config', CONFIG, '--partition', 'gpu',
          '--max_concurrent', '8', '--', '--config.train.epochs=1']
  assert sweep.main(argv) == 0
  script = capsys.readouterr().out
  plan = json.loads((out / 'sweep.json').read_text())
  todo = [i for i, r in enumerate(plan['runs']) if r['seed'] == 1]
  assert todo == [2, 3]  # seed-major order: every digit of seed 0, then of seed 1
  assert f'#SBATCH --array={sweep._ranges(todo)}%8' in script  # pylint: disable=protected-access
  assert '#SBATCH --partition=gpu' in script and '#SBATCH --gpus=1' in script
  assert f'experiments/sweep.py run-one {out} "$SLURM_ARRAY_TASK_ID"' in script
  assert '#SBATCH --requeue' in script and '#SBATCH --signal=USR1@120' in script
  # The script with fake srun / scontrol: a task whose run exits 75 requeues itself.
  fake_bin = tmp_path / 'bin'
  fake_bin.mkdir()
  for name, body in (('srun', 'exit "$FAKE_SRUN_RC"'),
                     ('scontrol', f'echo "$@" >> {tmp_path / "scontrol.txt"}')):
    (fake_bin / name).write_text(f'#!/bin/sh\n{body}\n')
    (fake_bin / name).chmod(0o755)
  (tmp_path / 'job.sh').write_text(script)
  for rc in (75, 2, 0):
    env = dict(os.environ, PATH=f'{fake_bin}:{os.environ["PATH"]}', FAKE_SRUN_RC=str(rc),
               SLURM_ARRAY_JOB_ID='7', SLURM_ARRAY_TASK_ID='3')
    result = subprocess.run(['bash', str(tmp_path / 'job.sh')], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == rc, result.stderr
  assert (tmp_path / 'scontrol.txt').read_text() == 'requeue 7_3\n'  # only the preempted one
  # An array task: run-one runs its run (now without failing) and the table sees it.
  monkeypatch.delenv('FAKE_FAIL')
  assert sweep.main(['run-one', str(out), str(todo[0])]) == 0
  assert sweep.main(['run-one', str(out), str(todo[0])]) == 0  # finished: skipped
  assert len(_calls(out, plan['runs'][todo[0]]['name'])) == 2
  assert sweep.main(['aggregate', str(out)]) == 0
  assert '4 runs: 3 done, 1 failed, 0 preempted, 0 pending.' in (out / 'summary.md').read_text()
  # --submit where SLURM is absent: a clear error.
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  assert sweep.main(argv[:1] + ['--submit'] + argv[1:]) == 2
  assert 'sbatch not found' in capsys.readouterr().err


def test_preempted_run_is_marked_apart_from_failed_and_resumed(tmp_path, fake_study,
                                                                monkeypatch, capsys):
  out = tmp_path / 'sweep'
  monkeypatch.setenv('FAKE_PREEMPT', '1_1')
  monkeypatch.setenv('FAKE_FAIL', '0_1')
  assert _sweep(out, fake_study) == 1  # a failure outranks a preemption
  captured = capsys.readouterr()
  assert 'd1_z2_s1 preempted' in captured.out and 'resume' in captured.err
  assert (out / 'd1_z2_s1' / 'preempted.json').exists()
  assert not (out / 'd1_z2_s1' / 'failed.json').exists()
  status = {r['name']: r['status'] for r in _csv(out / 'runs.csv')}
  assert status['d1_z2_s1'] == 'preempted' and status['d0_z2_s1'] == 'failed'
  md = (out / 'summary.md').read_text()
  assert '4 runs: 2 done, 1 failed, 1 preempted, 0 pending.' in md
  assert 'preempted s1' in md
  # Only preempted: exit status 75. Re-running resumes it and only it (and the failed one).
  monkeypatch.setenv('FAKE_FAIL', '')
  assert _sweep(out, fake_study) == 75
  monkeypatch.setenv('FAKE_PREEMPT', '')
  assert _sweep(out, fake_study) == 0
  assert len(_calls(out, 'd1_z2_s1')) == 3 and len(_calls(out, 'd0_z2_s0')) == 1
  assert not (out / 'd1_z2_s1' / 'preempted.json').exists()
  # run-one (a SLURM array task) returns 75 for a preempted run, so the script requeues it.
  monkeypatch.setenv('FAKE_PREEMPT', '0_0')
  (out / 'd0_z2_s0' / 'results.json').unlink()
  assert sweep.main(['run-one', str(out), '0']) == 75
  assert (out / 'd0_z2_s0' / 'preempted.json').exists()


def test_aggregate_pending_runs_and_the_paper_bar_at_every_latent(tmp_path, fake_study, capsys):
  out = tmp_path / 'sweep'
  assert sweep.main(['run', '--digits', '3', '--seeds', '0', '--latents', '32', '--out',
                     str(out), '--script', fake_study, '--config', CONFIG]) == 0
  plan = json.loads((out / 'sweep.json').read_text())
  plan['runs'].append(dict(name='d3_z32_s1', digit=3, latent=32, seed=1))  # never ran
  (out / 'sweep.json').write_text(json.dumps(plan))
  assert sweep.main(['aggregate', str(out)]) == 0
  md = (out / 'summary.md').read_text()
  # The paper's latent-2 AUROC (its headline) is the bar shown for every latent size.
  assert '| 32 | 3 | 1/2 | 0.250 | 0.800 | 0.94 | pending s1 |' in md
  rows = _csv(out / 'summary.csv')
  assert rows[0]['paper_auroc'] == '0.94' and rows[0]['pending'] == 's1'
  assert sweep.main(['aggregate', str(tmp_path / 'nothing')]) == 2
  assert 'holds no sweep' in capsys.readouterr().err


@pytest.mark.slow  # four real (tiny) MNIST studies, two at a time
def test_launch_sh_sweep_end_to_end(tmp_path):
  """``./launch.sh sweep`` on the real study: 2 digits x 2 seeds, then the table; again:
  everything is skipped."""
  # A VENV whose python is this one and whose install stamp is current: launch.sh then
  # installs nothing.
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  python = venv / 'bin' / 'python'
  python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
  python.chmod(python.stat().st_mode | stat.S_IEXEC)
  cksum = subprocess.run('cat setup.cfg pyproject.toml | cksum', shell=True, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
  (venv / '.vae_qc_installed').write_text(f'. {cksum}\n')
  out = tmp_path / 'sweep'
  tiny = ['--config.data.source=bundled', '--config.train.epochs=1',
          '--config.data.max_train=256', '--config.data.max_test_normal=64',
          '--config.data.max_test_anomalous=32', '--config.model.blocks=(4,)',
          '--config.model.fc=8', '--config.train.batch_size=64',
          '--config.eval.log_px_samples=4', '--config.eval.elbo_samples=4',
          '--config.eval.chunk_size=4', '--config.eval.map_samples=2',
          '--config.eval.batch_size=48', '--config.eval.num_plot_images=2']
  cmd = ['./launch.sh', 'sweep', '--digits', '0-1', '--seeds', '0,1', '--latents', '2',
         '--parallel', '2', '--out', str(out), '--', *tiny]
  env = dict(os.environ, VENV=str(venv), JAX_PLATFORMS='cpu')
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  table = _csv(out / 'summary.csv')
  rows = {(r['latent'], r['digit']): r for r in table if r['split'] == 'test'}
  val_rows = {(r['latent'], r['digit']): r for r in table if r['split'] == 'validation'}
  assert set(rows) == {('2', '0'), ('2', '1'), ('2', 'mean')} == set(val_rows)
  scores = ('neg_elbo', 'neg_log_px', 'recon_error', 'kl')
  per_digit = {}
  for digit in '01':
    assert rows['2', digit]['seeds_done'] == '2'
    aurocs = [json.loads((out / f'd{digit}_z2_s{seed}' / 'results.json').read_text())['scores']
              for seed in (0, 1)]
    for score in scores:  # the table's numbers are the runs' results.json values
      values = [a[score]['auroc'] for a in aurocs]
      assert float(rows['2', digit][f'{score}_mean']) == pytest.approx(np.mean(values), abs=1e-12)
      assert float(rows['2', digit][f'{score}_std']) == pytest.approx(
          np.std(values, ddof=1), abs=1e-12)
      per_digit[digit, score] = np.mean(values)
  for score in scores:
    assert float(rows['2', 'mean'][f'{score}_mean']) == pytest.approx(
        (per_digit['0', score] + per_digit['1', score]) / 2, abs=1e-12)
  runs = {r['name']: r for r in _csv(out / 'runs.csv')}
  assert float(runs['d1_z2_s1']['kl_auroc']) == pytest.approx(aurocs[1]['kl']['auroc'], abs=1e-12)
  # Validation figures come from the runs' validation scores, never from the test ones.
  val = [json.loads((out / f'd1_z2_s{seed}' / 'results.json').read_text())['validation']
         for seed in (0, 1)]
  assert float(val_rows['2', '1']['neg_elbo_mean']) == pytest.approx(
      np.mean([v['scores']['neg_elbo']['auroc'] for v in val]), abs=1e-12)
  # The seed ensemble's WAIC, recomputed from the two runs' scores.csv with sklearn.
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  per_seed = [{r['id']: r for r in _csv(out / f'd0_z2_s{seed}' / 'scores.csv')} for seed in (0, 1)]
  ids = sorted(per_seed[0])
  s = np.array([[float(p[i]['neg_log_px']) for i in ids] for p in per_seed])
  labels = [int(per_seed[0][i]['label']) for i in ids]
  assert float(rows['2', '0']['waic_ensemble_mean']) == pytest.approx(
      roc_auc_score(labels, s.mean(0) + s.var(0)), abs=1e-9)
  md = (out / 'summary.md').read_text()
  assert '4 runs: 4 done, 0 failed, 0 preempted, 0 pending.' in md and '| 0.96 |' in md
  results = json.loads((out / 'd1_z2_s1' / 'results.json').read_text())
  assert results['parallel'] == {'devices': 1, 'processes': 1}
  config = json.loads((out / 'd1_z2_s1' / 'config.json').read_text())
  assert (config['seed'], config['data']['anomalous_digit'], config['model']['latent']) == (1, 1, 2)

  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert '4 runs, 4 finished already, 0 to run' in again.stdout
  agg = subprocess.run(['./launch.sh', 'aggregate', str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert agg.returncode == 0 and '| latent | digit | seeds |' in agg.stdout
  # report.html: the per-digit table next to the paper's, each run linked to its own page.
  page = (out / 'report.html').read_text()
  assert 'id="per_digit"' in page and '<a href="d1_z2_s1/report.html">' in page
  if browser.find_chromium() is not None:
    seen = report_test.assert_page_ok(str(out / 'report.html'), ('per_digit', 'runs'), 1)
    assert '0.96' in seen['text']
    report_test.assert_page_ok(str(out / 'd0_z2_s0' / 'report.html'), ('scores',), 3)
