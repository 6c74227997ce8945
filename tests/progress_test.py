"""vae_qc.progress: one line at a steady interval with done/total, rate and ETA; quiet for
short steps; used by scoring and maps."""
import numpy as np
import pytest

from tests.conftest import tiny_model_config
from vae_qc import evaluate
from vae_qc import models
from vae_qc import progress


def _collect():
  lines = []
  return lines, lambda fmt, *args: lines.append(fmt % args)


def test_lines_have_done_total_rate_and_eta():
  lines, log = _collect()
  p = progress.Progress(10, 'scoring', interval_s=0, enabled=True, log=log)
  for _ in range(4):
    p.update(2)
  p.finish()
  assert lines[0].startswith('scoring 2/10  ') and 'img/s' in lines[0] and 'ETA' in lines[0]
  assert lines[3].startswith('scoring 8/10')
  assert lines[-1].startswith('scoring 8/10 done in')


def test_short_steps_and_other_processes_are_quiet():
  lines, log = _collect()
  with progress.Progress(10, 'scoring', interval_s=1000, enabled=True, log=log) as p:
    p.update(10)
  assert not lines  # finished within the first interval: nothing
  with progress.Progress(10, 'scoring', interval_s=0, enabled=False, log=log) as p:
    p.update(5)
  assert not lines  # not process 0


def test_tick_reports_a_step_without_news():
  lines, log = _collect()
  p = progress.Progress(3, 'sweep', unit='run', interval_s=0, enabled=True, log=log)
  p.tick()
  assert lines == [lines[0]] and lines[0].startswith('sweep 0/3') and 'elapsed' in lines[0]


@pytest.mark.parametrize('seconds,text', [(5, '5s'), (65, '1m05s'), (3720, '1h02m')])
def test_format_seconds(seconds, text):
  assert progress.format_seconds(seconds) == text


def test_scorer_reports_scores_and_maps(monkeypatch, tiny_images):
  lines, log = _collect()
  monkeypatch.setenv('VAE_QC_PROGRESS_S', '0')
  monkeypatch.setattr(progress.logging, 'info', log)
  cfg = tiny_model_config()
  variables = models.init(cfg, __import__('jax').random.key(0))
  # K = 3 for the ELBO, 2 for the maps: a score pass and a map pass, each reported
  scorer = evaluate.Scorer(cfg, evaluate.EvalSettings(scores=('neg_elbo',), elbo_samples=3,
                                                      batch_size=16, map_samples=2))
  values, maps = evaluate.score_images(scorer, variables, tiny_images, with_maps=True)
  assert values['neg_elbo'].shape == (64,) and np.all(np.isfinite(values['neg_elbo']))
  assert [l.split()[1] for l in lines if l.startswith('scoring ') and 'done' not in l] == [
      '16/64', '32/64', '48/64']
  assert any(l.startswith('maps 64/64 done in') for l in lines)
  # the same K: one pass gives both (evaluate.EvalSettings.elbo_from_maps), reported as such
  lines.clear()
  scorer = evaluate.Scorer(cfg, evaluate.EvalSettings(scores=('neg_elbo',), elbo_samples=2,
                                                      batch_size=16, map_samples=2))
  evaluate.score_images(scorer, variables, tiny_images, with_maps=True)
  assert [l.split()[1] for l in lines if 'done' not in l] == ['16/64', '32/64', '48/64']
  assert all(l.startswith('scoring+maps ') for l in lines)
  assert lines[-1].startswith('scoring+maps 64/64 done in')


def test_heartbeat_logs_during_a_slow_unit_and_stops():
  import time  # pylint: disable=g-import-not-at-top
  lines, log = _collect()
  p = progress.Progress(2, 'scoring', interval_s=0.2, enabled=True, log=log)
  time.sleep(0.7)  # one slow batch (or a compile): the heartbeat still logs
  assert lines and lines[0].startswith('scoring 0/2') and 'elapsed' in lines[0]
  p.update(2)
  p.finish()
  n = len(lines)
  time.sleep(0.5)
  assert len(lines) == n and lines[-1].startswith('scoring 2/2 done')


def test_heartbeat_stops_when_its_function_raises():
  import time  # pylint: disable=g-import-not-at-top
  lines, log = _collect()
  kept = []

  def step():
    kept.append(progress.Progress(5, 'scoring', interval_s=0.2, enabled=True, log=log))
    raise RuntimeError('boom')

  with pytest.raises(RuntimeError):
    step()
  time.sleep(1.5)
  n = len(lines)
  time.sleep(1.5)
  assert len(lines) == n and not kept[0]._thread.is_alive()  # pylint: disable=protected-access


def test_track_counts_items_and_beats_while_the_loop_runs():
  import time  # pylint: disable=g-import-not-at-top
  lines, log = _collect()
  for _ in progress.track(range(3), 3, 'reading', interval_s=0.2, log=log, enabled=True):
    time.sleep(0.3)
  assert any(l.startswith('reading ') and 'ETA' in l for l in lines)
  assert lines[-1].startswith('reading 3/3 done')


def test_watch_fills_silences_only(monkeypatch):
  import time  # pylint: disable=g-import-not-at-top

  from absl import logging  # pylint: disable=g-import-not-at-top
  lines, log = _collect()
  monkeypatch.setattr(progress.logging, 'info', log)
  with progress.watch('study', interval_s=0.3):
    time.sleep(1.0)  # silent: the watchdog speaks
    assert lines and lines[0].startswith('study: working, ')
    n = len(lines)
    for _ in range(8):  # someone logs every 0.1 s: the watchdog stays quiet
      logging.warning('step')
      time.sleep(0.1)
    assert len(lines) <= n + 1
  n = len(lines)
  time.sleep(0.6)
  assert len(lines) == n  # stopped on exit
