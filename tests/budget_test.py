"""Tests of the training length from a time budget (vae_qc.budget)."""
import json
import os

import ml_collections
import numpy as np
import pytest

from tests.conftest import tiny_model_config
from vae_qc import budget
from vae_qc import parallel as parallel_lib
from vae_qc import predict
from vae_qc.errors import ConfigError, VaeQcError


def _train_cfg(**fields):
  t = ml_collections.ConfigDict({'steps': 800, 'epochs': 0, 'batch_size': 16, 'num_samples': 1,
                                 'learning_rate': 1e-3, 'lr_schedule': 'cosine',
                                 'time_budget_s': 0.0})
  t.update(fields)
  return t


def _timings(*per_model):
  return {f'm{i}': {'compile_and_warmup_s': c, 'seconds_per_step': s}
          for i, (c, s) in enumerate(per_model)}


def test_estimate_adds_each_models_compilation_steps_and_evaluation():
  t = _timings((2.0, 0.1), (1.0, 0.02))
  assert budget.estimate(t, 100) == pytest.approx(2.0 + 10.0 + 1.0 + 2.0)
  t['m1']['eval_s'] = 7.0
  assert budget.estimate(t, 100) == pytest.approx(2.0 + 10.0 + 1.0 + 2.0 + 7.0)


def test_evaluation_is_estimated_from_the_training_steps_time():
  # 1,000 inputs at 0.1 s per step of 16: 6.25 ms an input in training; a map pass of K = 4
  # and a score pass of K = 9 cost (2 + 4) / 6 and (2 + 9) / 6 of that (the encoder, K
  # decoders and the host's part); one pass of K = 1, (2 + 1) / 6.
  probe = budget.Probe('', None, _train_cfg(), None, eval_inputs=1000, eval_samples=(4, 9),
                       cheap_eval_samples=(1,))
  timing = {'compile_and_warmup_s': 3.0, 'seconds_per_step': 0.1}
  per_input = 0.1 / 16
  assert budget.eval_seconds(probe, timing) == pytest.approx(1000 * per_input * 17 / 6)
  assert budget.eval_seconds(probe, timing, probe.cheap_eval_samples) == pytest.approx(
      1000 * per_input * 3 / 6)
  assert budget.eval_seconds(budget.Probe('', None, _train_cfg(), None), timing) == 0.0


def test_evaluation_is_priced_from_a_timed_map_pass_where_there_is_one():
  # A map pass of one sample timed at 2 ms an input: K samples cost (1 + K) / 2 of it (the
  # encoder once, K decoders), the host's part stays 1 / 6 of a training input.
  probe = budget.Probe('', None, _train_cfg(), None, eval_inputs=1000, eval_samples=(4, 9),
                       cheap_eval_samples=(1,))
  timing = {'compile_and_warmup_s': 3.0, 'seconds_per_step': 0.1,
            'map_seconds_per_input': 0.002}
  host = 0.1 / 16 / 6
  assert budget.eval_seconds(probe, timing) == pytest.approx(
      1000 * (0.002 * 5 / 2 + host + 0.002 * 10 / 2 + host))
  assert budget.eval_seconds(probe, timing, probe.cheap_eval_samples) == pytest.approx(
      1000 * (0.002 + host))


@pytest.mark.parametrize('fields, expected', [
    ({'map_samples': 4, 'elbo_samples': 4}, {'map_samples': 1, 'elbo_samples': 1}),
    ({'map_samples': 4, 'elbo_samples': 128}, {'map_samples': 1}),  # its own pass stays
    ({'map_samples': 1, 'elbo_samples': 1}, None),  # nothing cheaper
    # antithetic pairs: one pair, whose noise is below two (or four) independent samples'
    ({'map_samples': 4, 'elbo_samples': 4, 'map_antithetic': True},
     {'map_samples': 2, 'elbo_samples': 2}),
    ({'map_samples': 4, 'elbo_samples': 128, 'map_antithetic': True}, {'map_samples': 2}),
    ({'map_samples': 2, 'elbo_samples': 2, 'map_antithetic': True},  # a pair: one sample
     {'map_samples': 1, 'elbo_samples': 1}),
    ({'map_samples': 1, 'elbo_samples': 1, 'map_antithetic': True}, None),
    ({'map_samples': 4, 'elbo_samples': 4, 'map_antithetic': False},
     {'map_samples': 1, 'elbo_samples': 1}),
])
def test_the_cheaper_evaluation_draws_one_map_sample_or_one_pair(fields, expected):
  first = budget.cheap_evals(ml_collections.ConfigDict(fields))[:1]  # the one tried first
  assert first == ([expected] if expected else [])
  assert budget.cheap_evals(None) == []


def test_with_pairs_one_sample_is_the_next_cheaper_evaluation():
  pairs = ml_collections.ConfigDict({'map_samples': 4, 'elbo_samples': 4, 'map_antithetic': True})
  assert budget.cheap_evals(pairs) == [{'map_samples': 2, 'elbo_samples': 2},
                                       {'map_samples': 1, 'elbo_samples': 1}]
  pairs.map_samples = 2  # one pair already: only one sample is cheaper
  assert budget.cheap_evals(pairs) == [{'map_samples': 1}]
  assert budget.cheap_evals(None) == []


@pytest.mark.parametrize('budget_s, steps, samples', [
    (45.0, 40, 2),  # two pairs do not fit 40 steps (46 s), one pair does (44 s): it is taken
    (44.0, 40, 1),  # only one sample fits them (43 s): more steps before fewer samples' noise
    (25.0, 20, 2),  # neither fits 40; both fit 20 (the pair 24 s): the pair
])
def test_a_plan_with_pairs_takes_one_sample_only_where_that_trains_more_steps(
    tmp_path, tiny_images, monkeypatch, budget_s, steps, samples):
  monkeypatch.setattr(budget, 'measure', lambda *a: {'compile_and_warmup_s': 0.0,
                                                     'seconds_per_step': 1.0})
  # 96 inputs at 1/16 s each in training: evaluation is (2 + K) s: 6 s with K = 4 (two
  # pairs), 4 s with one pair, 3 s with one sample
  config = ml_collections.ConfigDict({
      'train': _train_cfg(time_budget_s=budget_s, steps=40), 'seed': 0,
      'eval': {'map_samples': 4, 'elbo_samples': 4, 'map_antithetic': True}})
  probe = budget.Probe('', tiny_model_config(), config.train, None, eval_inputs=96,
                       eval_samples=(4,), cheap_eval_samples=(2,), cheapest_eval_samples=(1,))
  plan = budget.plan(config, str(tmp_path), tiny_images, [probe], parallel_lib.Parallel.create())
  assert (plan['steps'], plan['eval'], plan['fits']) == (
      steps, {'map_samples': samples, 'elbo_samples': samples}, True)
  assert plan['cheaper_eval'] == plan['eval']  # what a check during training falls back to
  assert plan['timings']['main']['cheap_eval_s'] == pytest.approx(2.0 + samples)


@pytest.mark.parametrize('budget_s, expected', [
    (1e9, (800, 0, False, True)),  # everything fits: the configured steps
    (3.0 + 800 * 0.12, (800, 0, False, True)),  # exactly at the budget still fits
    (3.0 + 800 * 0.12 - 1e-6, (400, 1, False, True)),
    (3.0 + 200 * 0.12, (200, 2, False, True)),
    (3.0 + 100 * 0.12, (100, 3, False, True)),
    (3.0 + 100 * 0.12 - 1e-6, (100, 3, False, False)),  # not even 1/8 fits: 1/8, says so
    (0.5, (100, 3, False, False)),
])
def test_choose_halves_the_steps_until_the_estimate_fits(budget_s, expected):
  t = _timings((2.0, 0.1), (1.0, 0.02))
  assert budget.choose(t, 800, budget_s) == expected


@pytest.mark.parametrize('budget_s, expected', [
    (3.0 + 96.0 + 50.0, (800, 0, False, True)),  # the configured evaluation fits
    (3.0 + 96.0 + 20.0, (800, 0, True, True)),  # one map sample, all the steps
    (3.0 + 96.0 + 20.0 - 1e-6, (400, 1, True, True)),  # then halvings, with one sample
    (3.0 + 12.0 + 20.0, (100, 3, True, True)),
    (3.0 + 12.0 + 20.0 - 1e-6, (100, 3, True, False)),
])
def test_choose_takes_one_map_sample_before_fewer_steps(budget_s, expected):
  t = _timings((2.0, 0.1), (1.0, 0.02))
  t['m0'].update(eval_s=30.0, cheap_eval_s=12.0)
  t['m1'].update(eval_s=20.0, cheap_eval_s=8.0)
  assert budget.levels(800, True) == [(800, 0, False), (800, 0, True), (400, 1, True),
                                      (200, 2, True), (100, 3, True)]
  assert budget.choose(t, 800, budget_s, cheap=True) == expected
  assert budget.estimate(t, 800, cheap=True) == pytest.approx(3.0 + 96.0 + 20.0)


def test_check_refuses_a_negative_budget():
  assert budget.check(_train_cfg()) == 0.0
  assert budget.check(_train_cfg(time_budget_s=60)) == 60.0
  with pytest.raises(ConfigError, match='time_budget_s must be >= 0'):
    budget.check(_train_cfg(time_budget_s=-1.0))


def test_planned_config_sets_the_steps_of_a_copy():
  config = ml_collections.ConfigDict({'train': _train_cfg(time_budget_s=60.0, steps=0, epochs=3),
                                      'seed': 0})
  assert budget.planned_config(config, None) is config
  out = budget.planned_config(config, {'steps': 100})
  assert (out.train.steps, out.train.epochs) == (100, 0)
  assert (config.train.steps, config.train.epochs) == (0, 3)
  config.eval = ml_collections.ConfigDict({'map_samples': 4, 'elbo_samples': 4, 'map': 'nll'})
  out = budget.planned_config(config, {'steps': 100, 'eval': {'map_samples': 1,
                                                              'elbo_samples': 1}})
  assert (out.eval.map_samples, out.eval.elbo_samples, out.eval.map) == (1, 1, 'nll')
  assert config.eval.map_samples == 4


def test_a_length_in_epochs_is_halved_as_its_steps(tmp_path, tiny_images, monkeypatch):
  monkeypatch.setattr(budget, 'measure', lambda *a: {'compile_and_warmup_s': 0.0,
                                                     'seconds_per_step': 1.0})
  config = ml_collections.ConfigDict({'train': _train_cfg(time_budget_s=30.0, steps=0,
                                                          epochs=10), 'seed': 0})
  probe = budget.Probe('', tiny_model_config(), config.train, None)
  plan = budget.plan(config, str(tmp_path), tiny_images, [probe], parallel_lib.Parallel.create())
  # 64 images, batches of 16: 4 steps an epoch, 40 in all; 1 s a step: 20 steps fit 30 s
  assert (plan['configured_steps'], plan['steps'], plan['fits']) == (40, 20, True)


def test_plan_measures_every_model_then_reads_its_plan_back(tmp_path, tiny_images):
  par = parallel_lib.Parallel.create()
  config = ml_collections.ConfigDict({'train': _train_cfg(time_budget_s=1e-4), 'seed': 0})
  probes = [budget.Probe('', tiny_model_config(), config.train, None),
            budget.Probe('scale_p4', tiny_model_config(), config.train, None)]
  assert budget.plan(ml_collections.ConfigDict({'train': _train_cfg(), 'seed': 0}),
                     str(tmp_path), tiny_images, probes, par) is None  # no budget: no plan
  assert not os.path.exists(tmp_path / budget.FILE)
  plan = budget.plan(config, str(tmp_path), tiny_images, probes, par)
  assert plan['steps'] == 100 and not plan['fits']  # 1e-4 s: nothing fits, 1/8 of 800
  assert set(plan['timings']) == {'main', 'scale_p4'}
  for t in plan['timings'].values():
    assert t['seconds_per_step'] > 0 and t['compile_and_warmup_s'] > 0
  assert plan['estimated_s'] == pytest.approx(budget.estimate(plan['timings'], 100))
  assert all(t['eval_s'] == 0.0 for t in plan['timings'].values())  # nothing to evaluate
  assert 0 < plan['probe_s']
  saved = json.loads((tmp_path / budget.FILE).read_text())
  assert saved == json.loads(json.dumps(plan))
  # A resumption reads the plan (nothing measured: probes that cannot run are not run) ...
  assert budget.plan(config, str(tmp_path), tiny_images, [], par) == saved
  # ... and plans again when the steps or the budget changed.
  bigger = ml_collections.ConfigDict({'train': _train_cfg(time_budget_s=1e9), 'seed': 0})
  again = budget.plan(bigger, str(tmp_path), tiny_images, probes, par)
  assert again['steps'] == 800 and again['fits'] and again['budget_s'] == 1e9
  assert json.loads((tmp_path / budget.FILE).read_text())['steps'] == 800


def test_measure_keeps_nothing_and_times_the_steps(tiny_images):
  par = parallel_lib.Parallel.create()
  steps = []
  transform = lambda batch, step: (steps.append(step), batch)[1]  # batches as training draws
  probe = budget.Probe('', tiny_model_config(), _train_cfg(), transform)
  t = budget.measure(probe, np.asarray(tiny_images), 0, par)
  assert set(t) == {'compile_and_warmup_s', 'seconds_per_step', 'window_seconds_per_step'}
  assert 0 < t['seconds_per_step'] < t['compile_and_warmup_s']  # the first step compiles
  assert len(t['window_seconds_per_step']) == budget.PROBE_WINDOWS
  assert t['seconds_per_step'] == min(t['window_seconds_per_step'])  # the fastest window
  assert steps == list(range(budget.WARMUP_STEPS + budget.PROBE_WINDOWS * budget.PROBE_STEPS))


def test_measure_times_a_map_pass_of_the_evaluations_own_code(tiny_images):
  from vae_qc import evaluate  # pylint: disable=g-import-not-at-top
  par = parallel_lib.Parallel.create()
  settings = evaluate.EvalSettings(map_samples=1, batch_size=8, map='sq_error')
  probe = budget.Probe('', tiny_model_config(), _train_cfg(), None, eval_inputs=40,
                       eval_samples=(4,), map_settings=settings)
  t = budget.measure(probe, np.asarray(tiny_images), 0, par)
  assert 0 < t['map_seconds_per_input'] * 8 < t['map_compile_s']  # the first pass compiles
  assert budget.eval_seconds(probe, t) == pytest.approx(
      40 * (t['map_seconds_per_input'] * 5 / 2 + t['seconds_per_step'] / 16 / 6))
  # a probe with no evaluation (eval_inputs 0) times no map pass: the step's price
  bare = budget.measure(budget.Probe('', tiny_model_config(), _train_cfg(), None,
                                     map_settings=settings), np.asarray(tiny_images), 0, par)
  assert 'map_seconds_per_input' not in bare


def test_plan_takes_one_map_sample_first_and_predict_reads_it(tmp_path, tiny_images,
                                                              monkeypatch):
  calls = []
  monkeypatch.setattr(budget, 'measure', lambda *a: (calls.append(1), {
      'compile_and_warmup_s': 0.0, 'seconds_per_step': 1.0})[1])
  # 40 steps of 1 s; 96 inputs at 1/16 s each in training: evaluation with K = 4 is 6 s,
  # with one sample 3 s. A budget of 44 s fits all the steps with one sample.
  config = ml_collections.ConfigDict({
      'train': _train_cfg(time_budget_s=44.0, steps=40), 'seed': 0,
      'eval': {'map_samples': 4, 'elbo_samples': 4}})
  probe = budget.Probe('', tiny_model_config(), config.train, None, eval_inputs=96,
                       eval_samples=(4,), cheap_eval_samples=(1,))
  plan = budget.plan(config, str(tmp_path), tiny_images, [probe], parallel_lib.Parallel.create())
  assert (plan['steps'], plan['eval'], plan['fits']) == (
      40, {'map_samples': 1, 'elbo_samples': 1}, True)
  assert plan['configured_map_samples'] == 4 and plan['estimated_s'] == pytest.approx(43.0)
  assert plan['timings']['main']['eval_s'] == pytest.approx(6.0)
  assert plan['timings']['main']['cheap_eval_s'] == pytest.approx(3.0)
  # predict scores as the run evaluated: the saved config with the plan's samples
  (tmp_path / 'config.json').write_text(json.dumps(config.to_dict()))
  (tmp_path / 'model.json').write_text('{}')
  read = predict.read_config(str(tmp_path))
  assert (read.eval.map_samples, read.eval.elbo_samples, read.train.steps) == (1, 1, 40)
  # a run without a budget (or without a plan) is read as saved
  config.train.time_budget_s = 0.0
  (tmp_path / 'config.json').write_text(json.dumps(config.to_dict()))
  assert predict.read_config(str(tmp_path)).eval.map_samples == 4
  # other map samples: planned again (measured again)
  config.train.time_budget_s = 44.0
  assert len(calls) == 1
  budget.plan(config, str(tmp_path), tiny_images, [probe], parallel_lib.Parallel.create())
  assert len(calls) == 1  # the same settings: read back
  config.eval.map_samples = config.eval.elbo_samples = 2
  again = budget.plan(config, str(tmp_path), tiny_images, [probe],
                      parallel_lib.Parallel.create())
  assert len(calls) == 2 and again['configured_map_samples'] == 2


def test_a_broken_plan_is_named_by_predict_and_planned_again_by_the_study(
    tmp_path, tiny_images, monkeypatch):
  monkeypatch.setattr(budget, 'measure', lambda *a: {'compile_and_warmup_s': 0.0,
                                                     'seconds_per_step': 1.0})
  config = ml_collections.ConfigDict({'train': _train_cfg(time_budget_s=1e9, steps=40),
                                      'seed': 0, 'eval': {'map_samples': 4, 'elbo_samples': 4}})
  (tmp_path / 'config.json').write_text(json.dumps(config.to_dict()))
  (tmp_path / 'model.json').write_text('{}')
  for broken in ('{"steps": 4', '[]', '{"eval": {}}'):  # cut short, not a dict, no steps
    (tmp_path / budget.FILE).write_text(broken)
    with pytest.raises(VaeQcError, match='train_plan.json is not a training plan') as e:
      predict.read_config(str(tmp_path))
    assert '\n' not in str(e.value)
  probe = budget.Probe('', tiny_model_config(), config.train, None)
  plan = budget.plan(config, str(tmp_path), tiny_images, [probe], parallel_lib.Parallel.create())
  assert plan['steps'] == 40 and json.loads((tmp_path / budget.FILE).read_text()) == plan


def _checked_plan(steps=800):
  return {'budget_s': 100.0, 'configured_steps': steps, 'steps': steps, 'fraction': 1.0,
          'eval': {}, 'cheaper_eval': {'map_samples': 1}, 'planned_at': 1000.0,
          'schedule': [[0, steps]], 'checks': [], 'fits': True,
          'timings': {'main': {'compile_and_warmup_s': 1.0, 'seconds_per_step': 0.05,
                               'eval_s': 10.0, 'cheap_eval_s': 4.0},
                      'scale_p16': {'compile_and_warmup_s': 1.0, 'seconds_per_step': 0.02,
                                    'eval_s': 5.0, 'cheap_eval_s': 2.0}}}


def _deadline(tmp_path, plan, now):
  d = budget.Deadline(plan, str(tmp_path), parallel_lib.Parallel.create())
  d.clock = lambda: now  # the instance's: the class's is time.time
  return d


def test_a_check_takes_one_map_sample_then_the_steps_that_fit(tmp_path):
  plan = _checked_plan()
  d = _deadline(tmp_path, plan, now=1025.0)  # 75 s of the budget left
  assert d.next_stop() == 50  # 1/16 of 800
  d.observe(10, 0.0)  # the first line of a segment holds its compilation: measured from it
  d.observe(30, 2.0)
  d.observe(50, 4.0)  # 0.1 s a step: twice the probe, so everything else is twice too
  assert d.check(50)
  # from now on: the scale's compilation 1 s, the rest of the main model (n - 50) * 0.1 s,
  # the scale n * 0.04 s, evaluation 2 * (10 + 5) s; with one map sample 2 * (4 + 2) s.
  # 750 steps would need 1 - 5 + 30 + 0.14 n = 131 s > 75 s; one map sample: 0.14 n <= 67.
  assert plan['steps'] == 478 and plan['eval'] == {'map_samples': 1}
  assert plan['schedule'] == [[0, 800], [50, 478]] and plan['fits']
  record = plan['checks'][-1]
  assert record['seconds_per_step'] == pytest.approx(0.1)
  assert record['ratio_to_probe'] == pytest.approx(2.0)
  assert (record['at_step'], record['steps_before'], record['steps']) == (50, 800, 478)
  assert json.loads((tmp_path / budget.FILE).read_text()) == json.loads(json.dumps(plan))
  assert d.next_stop() == 200  # 1/4 of the first plan's steps, before the new end
  # planned_config: the new length and evaluation for every model of the run
  config = ml_collections.ConfigDict({'train': _train_cfg(),
                                      'eval': {'map_samples': 4, 'elbo_samples': 4}})
  planned = budget.planned_config(config, plan)
  assert planned.train.steps == 478 and planned.eval.map_samples == 1


def test_a_check_keeps_a_plan_that_fits_and_never_goes_below_an_eighth(tmp_path):
  plan = _checked_plan()
  d = _deadline(tmp_path, plan, now=1025.0)
  d.observe(10, 0.0)
  d.observe(50, 2.0)  # the probe's speed: 1 - 2.5 + 15 + 0.07 * 800 = 69.5 s <= 75 s
  assert not d.check(50)
  assert plan['steps'] == 800 and plan['eval'] == {} and plan['schedule'] == [[0, 800]]
  assert plan['checks'][-1]['steps'] == 800
  # too few lines since the last check: nothing measured, nothing changed
  d.observe(100, 3.0)
  assert not d.check(200) and plan['checks'][-1] == {'at_step': 200, 'steps_before': 800}
  assert d.next_stop() == 400
  # far too slow: at least 1/8 of the configured steps, and more than are done
  d.clock = lambda: 1095.0
  d.observe(250, 3.0)
  d.observe(400, 33.0)  # 0.2 s a step
  assert d.check(400)
  assert plan['steps'] == 401 and not plan['fits'] and plan['schedule'][-1] == [400, 401]
  assert d.next_stop() is None  # the last check (1/2 of 800) is done


def test_a_plan_read_back_on_a_resumption_is_not_checked(tmp_path):
  plan = _checked_plan()
  par = parallel_lib.Parallel.create()
  assert budget.Deadline.start(plan, str(tmp_path), par, since=999.0) is not None
  assert budget.Deadline.start(plan, str(tmp_path), par, since=1001.0) is None
  assert budget.Deadline.start(None, str(tmp_path), par, since=0.0) is None
