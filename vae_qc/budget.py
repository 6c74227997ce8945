"""Training length (and map samples) from a time budget: ``config.train.time_budget_s``.

A recipe's length (``config.train.steps``) is chosen on one machine; on a CPU a few times
slower the same run takes a few times longer. ``time_budget_s`` > 0 is the time that training
and evaluation together may take. The study first times one training step of every model of
the run on this machine (:func:`measure`: each model's compiled step, the one training uses,
over :data:`PROBE_WINDOWS` windows of :data:`PROBE_STEPS` steps of real batches, after
:data:`WARMUP_STEPS` that include its compilation; the fastest window's mean counts, so that
a moment of other load on a shared machine does not halve a run), and trains

    the first of: S steps with the configured evaluation; S steps with one map sample, or
    one antithetic pair where the map draws pairs (:func:`cheap_evals`); S / 2, S / 4, ...,
    S / 2**MAX_HALVINGS steps with that cheaper evaluation (and where that is a pair, one
    sample instead when one sample trains more steps: :func:`cheap_evals`);
    whose estimate Σ_models (compile_and_warmup_s + steps · seconds_per_step + eval_s)
    fits in what is left of time_budget_s after this timing,

(:func:`levels`, :func:`choose`), eval_s being the model's share of evaluation: the inputs
evaluation passes through it and the samples of each pass, priced by a map pass of the model
that the probe times through the evaluation's own code where the study gives it the settings
(``Probe.map_settings``), else from its training step's time (:func:`eval_seconds`), and S
the run's length in steps (``train.steps``, or ``train.epochs``
whole passes over the training images). One map sample comes before fewer steps: it cuts
evaluation's device work to 2/5 and cost ≤ 0.004 of any figure on two validation sets,
where halving the steps cost more (docs/print_study.md, "Time budget and the plans of
slower machines"). Every model of the run (the main one and ``config.data.scales``; a
background model too, untimed) trains that many steps and a cosine rate decays over them, so
a shorter run is the recipe at a shorter length, not a cut-off run. Where even
S / 2**MAX_HALVINGS does not fit, it trains that and says so. With the cheaper evaluation
the run is evaluated so (``config.eval.map_samples``, and ``elbo_samples`` where it equals
it, set to 1, or 2 for a pair, in the planned config), its thresholds too, and
``predict.py`` reads the plan (:func:`read`) to score new photos alike. The plan goes to
``<workdir>/train_plan.json`` before training and is read back when the run resumes, so a
resumed run trains the steps it planned (it plans again only when S, the map samples or
``time_budget_s`` changed). While the main model trains, :class:`Deadline` checks the plan
against its own speed and may shorten the run further (the cosine then ends at the new
length). The steps and samples depend on the machine's speed (and, near
a boundary, on its load): the plan file and ``results.json`` (``train.plan``) say which were
taken. With ``time_budget_s = 0`` (the default) nothing is measured and the run trains S
steps.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from vae_qc import evaluate
from vae_qc import train as train_lib
from vae_qc import workdir as wd
from vae_qc.errors import ConfigError, VaeQcError

FILE = 'train_plan.json'
WARMUP_STEPS = 3  # the first compiles the step; timed apart, as the run compiles it again
PROBE_STEPS = 10  # a window's steps
PROBE_WINDOWS = 3  # timed apart; the fastest counts (a pause in one window is not the machine)
MAX_HALVINGS = 3  # at most config.train.steps / 8
# Where the main model's training checks its own speed against the plan (Deadline), as
# fractions of the planned steps, and by how much a check may shorten the run before it does.
CHECK_FRACTIONS = (1 / 16, 1 / 4, 1 / 2)
CHECK_TOLERANCE = 0.97  # a new length above this fraction of the planned one keeps the plan


# Evaluation, in training steps' worth: a pass of K samples over a model input runs the encoder
# once and the decoder K times, forward only; a training step runs both forward and backward
# (about three forward passes) once. So a pass costs about (1 + K) / 6 of a training input,
# and the host's part (stitching, smoothing, metrics, pictures), which does not grow with K,
# about 1 / 6 more (a sixth of the print recipe's evaluation at K = 4): (2 + K) / 6.
EVAL_SAMPLE_COST = 1 / 6
EVAL_HOST_COST = 1 / 6
# Where the probe can time a map pass (Probe.map_settings), it does: one evaluation batch of
# the model's inputs, one sample, after its compilation, the fastest of MAP_WINDOWS passes.
# A pass of K samples then costs (1 + K) / 2 of it (the encoder once, K decoders); the price
# from the training step above misjudges models whose step is mostly cost per step (a 16-px
# model's tiles, priced 2.3 times too high at 768 px: docs/print_study.md, "Warping masks at
# sizes other than 224 px").
MAP_WINDOWS = 3
CHEAP_MAP_SAMPLES = 1  # the cheaper evaluation, before fewer steps (cheap_evals) ...
CHEAP_ANTITHETIC_SAMPLES = 2  # ... one antithetic pair where the map draws pairs


@dataclasses.dataclass(frozen=True)
class Probe:
  """One model of the run to time: its name (the run directory's, '' for the main model), its
  model config, the train config it trains with and its batch transform (random patches);
  and what evaluation will pass through it: ``eval_inputs`` inputs of the training size (tiles,
  or images in units of the training input's pixels), once per entry of ``eval_samples``
  (each pass's samples K: the map pass, and a score pass where the map pass does not give
  the scores); ``cheap_eval_samples`` the same under the first of :func:`cheap_evals`, and
  ``cheapest_eval_samples`` under the second (one sample, where the first is an antithetic
  pair)."""
  name: str
  model_cfg: Any
  train_cfg: ml_collections.ConfigDict
  transform: Callable[[np.ndarray, int], np.ndarray] | None
  eval_inputs: int = 0
  eval_samples: tuple[int, ...] = ()
  cheap_eval_samples: tuple[int, ...] | None = None  # the same under cheap_evals[0] (if any)
  cheapest_eval_samples: tuple[int, ...] | None = None  # ... under cheap_evals[1] (if any)
  map_settings: Any = None  # evaluate.EvalSettings of one map sample: time a map pass (measure)


def check(train_cfg) -> float:
  """``config.train.time_budget_s`` (0: off); ConfigError when it is negative."""
  budget = float(train_cfg.get('time_budget_s', 0.0) or 0.0)
  if budget < 0:
    raise ConfigError(f'config.train.time_budget_s must be >= 0 (0: no budget), got {budget}.')
  return budget


def cheap_evals(eval_cfg) -> list[dict[str, int]]:
  """The evaluations a budget may take before fewer steps (``config.eval`` fields to set),
  best first: one antithetic pair (two samples) and then one sample where
  ``eval.map_antithetic`` draws the map's samples in pairs, one sample otherwise; with as
  many −ELBO samples where the −ELBO draws the map's samples (so that one pass still gives
  both). [] where the map draws that few already (or there is no ``eval_cfg``)."""
  if eval_cfg is None:
    return []
  map_samples = int(eval_cfg.map_samples)
  few = ([CHEAP_ANTITHETIC_SAMPLES] if eval_cfg.get('map_antithetic', False) else []) + [
      CHEAP_MAP_SAMPLES]
  out = []
  for k in few:
    if k < map_samples:
      fields = {'map_samples': k}
      if int(eval_cfg.get('elbo_samples', 0)) == map_samples:
        fields['elbo_samples'] = k
      out.append(fields)
  return out


def measure(probe: Probe, images: np.ndarray, seed: int, par) -> dict[str, float]:
  """{'compile_and_warmup_s', 'seconds_per_step', 'window_seconds_per_step'} of ``probe``'s
  training step on ``images`` [N, H, W, C] (batches as training draws them; nothing is kept):
  ``seconds_per_step`` is the fastest of the :data:`PROBE_WINDOWS` windows' means, listed in
  ``window_seconds_per_step``."""
  tc = probe.train_cfg
  total = WARMUP_STEPS + PROBE_WINDOWS * PROBE_STEPS
  optimizer = train_lib.make_optimizer(tc, total)  # the run's structure
  step_fn = train_lib.compile_train_step(probe.model_cfg, optimizer, tc.num_samples,
                                         shardings=par.train_step_shardings)
  state = par.replicate(train_lib.create_train_state(probe.model_cfg, optimizer,
                                                     jax.random.key(seed)))
  key = par.replicate(jax.random.key(seed))
  marks = [time.perf_counter()]
  for i, x in enumerate(train_lib.batches(images, tc.batch_size, seed, 0, total,
                                          probe.transform)):
    if i >= WARMUP_STEPS and (i - WARMUP_STEPS) % PROBE_STEPS == 0:
      jax.block_until_ready(state)
      marks.append(time.perf_counter())
    state, _ = step_fn(state, par.put_batch(x), key)
  jax.block_until_ready(state)
  marks.append(time.perf_counter())
  windows = [(b - a) / PROBE_STEPS for a, b in zip(marks[1:], marks[2:])]
  out = {'compile_and_warmup_s': marks[1] - marks[0], 'seconds_per_step': min(windows),
         'window_seconds_per_step': windows}
  if probe.map_settings is not None and probe.eval_inputs:
    out.update(_time_map_pass(probe, par.to_host(state.variables), seed, par))
  return out


def _time_map_pass(probe: Probe, variables, seed: int, par) -> dict[str, float]:
  """{'map_compile_s', 'map_seconds_per_input'}: a map pass of ``probe``'s model through the
  evaluation's own code (``evaluate.Scorer.maps``, one sample) over one evaluation batch of
  inputs of its size (the values do not change the cost), after its compilation; the fastest
  of :data:`MAP_WINDOWS` passes, per input."""
  shape = tuple(probe.model_cfg.image_shape)
  scorer = evaluate.Scorer(probe.model_cfg, probe.map_settings, parallel=par)
  n = evaluate.batch_size_for(probe.map_settings, shape[:2])
  x = np.random.default_rng(seed).random((n,) + shape, dtype=np.float32)
  t0 = time.perf_counter()
  scorer.maps(variables, x)
  compile_s = time.perf_counter() - t0
  passes = []
  for _ in range(MAP_WINDOWS):
    t0 = time.perf_counter()
    scorer.maps(variables, x)
    passes.append(time.perf_counter() - t0)
  return {'map_compile_s': compile_s, 'map_seconds_per_input': min(passes) / n}


def eval_seconds(probe: Probe, timing: dict[str, float],
                 samples: tuple[int, ...] | None = None) -> float:
  """Estimated seconds of evaluation's passes through ``probe``'s model (each pass's samples
  ``samples``, by default ``probe.eval_samples``): from its timed map pass where ``timing``
  has one (``map_seconds_per_input``, :func:`measure`; (1 + K)/2 of it a pass), else from its
  training step's time (:data:`EVAL_SAMPLE_COST`); the host's part from the training step's
  time either way (:data:`EVAL_HOST_COST`)."""
  samples = probe.eval_samples if samples is None else samples
  per_input = timing['seconds_per_step'] / probe.train_cfg.batch_size
  if 'map_seconds_per_input' in timing:  # a map pass was timed: its price, not the step's
    one = timing['map_seconds_per_input']
    return probe.eval_inputs * sum(one * (1 + k) / 2 + per_input * EVAL_HOST_COST
                                   for k in samples)
  return probe.eval_inputs * per_input * sum((1 + k) * EVAL_SAMPLE_COST + EVAL_HOST_COST
                                             for k in samples)


def estimate(timings: dict[str, dict[str, float]], steps: int, cheap: bool = False) -> float:
  """Seconds to train every timed model ``steps`` steps, compilation included, and to
  evaluate the run (each timing's ``eval_s``, or ``cheap_eval_s`` under the plan's cheaper one,
  :func:`cheap_evals`)."""
  return sum(t['compile_and_warmup_s'] + steps * t['seconds_per_step']
             + t.get('cheap_eval_s' if cheap else 'eval_s', 0.0) for t in timings.values())


def levels(steps: int, cheap: bool) -> list[tuple[int, int, bool]]:
  """The budget's levels, best first, as (steps, halvings j, cheap evaluation): ``steps``
  with the configured evaluation; then, where there is a cheaper one (``cheap``),
  ``steps`` with it; then steps // 2**j, j = 1 ... MAX_HALVINGS (with it where there is one)."""
  out = [(steps, 0, False)] + ([(steps, 0, True)] if cheap else [])
  return out + [(max(1, steps // 2**j), j, cheap) for j in range(1, MAX_HALVINGS + 1)]


def choose(timings: dict[str, dict[str, float]], steps: int, budget_s: float,
           cheap: bool = False) -> tuple[int, int, bool, bool]:
  """(steps to train, halvings j, cheap evaluation, whether it fits): the first of
  :func:`levels` whose :func:`estimate` is ≤ ``budget_s`` (the last, not fitting, when none
  is)."""
  ladder = levels(steps, cheap)
  for planned, j, cheap_j in ladder:
    if estimate(timings, planned, cheap_j) <= budget_s:
      return planned, j, cheap_j, True
  return (*ladder[-1], False)


def _agreed(values: tuple[int, ...], par) -> tuple[int, ...]:
  """Process 0's ``values`` on every process (all train the same steps and evaluate alike)."""
  if par.process_count == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return tuple(int(v) for v in
               multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32)))


def read(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The plan a run under a budget saved in ``workdir`` (None without a budget or a plan)."""
  path = os.path.join(workdir, FILE)
  train = config.get('train')  # a config.json without it is refused by its reader, not here
  if train is None or not check(train) or not os.path.exists(path):
    return None
  return _load(path)


def _parse(saved: Any) -> dict[str, Any]:
  if not isinstance(saved, dict) or not isinstance(saved.get('steps'), int):
    raise ValueError('no step count')
  return saved


def _load(path: str) -> dict[str, Any]:
  """The plan saved at ``path``; VaeQcError naming it when it does not parse."""
  try:
    return wd.read_table(path, _parse, '', 'a training plan')
  except VaeQcError as e:
    raise VaeQcError(f'{e} A finished run evaluated with the plan it wrote there; without it '
                     'the map samples it used are unknown.') from None


def plan(config: ml_collections.ConfigDict, workdir: str, images: np.ndarray,
         probes: Sequence[Probe], par) -> dict[str, Any] | None:
  """The run's plan (None without a budget): read from ``workdir`` when it was made for this
  ``train.steps``, map samples and budget, else measured (:func:`measure`, every probe),
  chosen (:func:`choose`) and written there by the writing process. Its ``steps`` and
  ``eval`` (the ``config.eval`` fields it sets, {} for none) make :func:`planned_config`."""
  budget = check(config.train)
  if not budget:
    return None
  steps = train_lib.num_steps(config.train, len(images))  # set by train.steps or train.epochs
  eval_cfg = config.get('eval')
  map_samples = None if eval_cfg is None else int(eval_cfg.map_samples)
  path = os.path.join(workdir, FILE)
  saved = None
  if os.path.exists(path):
    try:
      saved = _load(path)
    except VaeQcError as e:
      logging.warning('%s Planning again.', e)
  if saved is not None:
    if (saved.get('configured_steps') == steps and saved.get('budget_s') == budget
        and saved.get('configured_map_samples', map_samples) == map_samples):
      logging.info('Training plan (%s): %d of %d steps, as planned before this resumption.',
                   path, saved['steps'], steps)
      return saved
    logging.info('Training plan (%s) was made for %s steps, %s map samples and a budget of '
                 '%s s; planning again for %d steps, %s map samples and %g s.', path,
                 saved.get('configured_steps'), saved.get('configured_map_samples'),
                 saved.get('budget_s'), steps, map_samples, budget)
  options = cheap_evals(eval_cfg)
  cheaper = options[0] if options else None
  planned_at = time.time()  # the budget's clock starts here (a check's elapsed time: Deadline)
  t0 = time.perf_counter()
  timings = {}
  for p in probes:
    timing = measure(p, images, config.seed, par)
    t = dict(timing, eval_s=eval_seconds(p, timing), eval_inputs=p.eval_inputs,
             eval_samples=list(p.eval_samples))
    if cheaper:
      t['cheap_eval_s'] = eval_seconds(p, timing, p.cheap_eval_samples)
    if len(options) > 1 and p.cheapest_eval_samples is not None:
      t['cheapest_eval_s'] = eval_seconds(p, timing, p.cheapest_eval_samples)
    timings[p.name or 'main'] = t
  probe_s = time.perf_counter() - t0  # spent already: the rest of the budget is what is left
  planned, halvings, cheap, fits = choose(timings, steps, budget - probe_s, bool(cheaper))
  if cheap and len(options) > 1 and all('cheapest_eval_s' in t for t in timings.values()):
    # one sample instead of the pair where that trains more steps: fewer steps cost more
    # than one sample's noise (docs/print_study.md, "Time budget ..." and "Antithetic pairs")
    single = {name: dict(t, cheap_eval_s=t['cheapest_eval_s'], pair_eval_s=t['cheap_eval_s'])
              for name, t in timings.items()}
    other = choose(single, steps, budget - probe_s, True)
    if other[0] > planned:
      (planned, halvings, cheap, fits), timings, cheaper = other, single, options[1]
  planned, halvings, cheap = _agreed((planned, halvings, cheap), par)
  out = {'budget_s': budget, 'configured_steps': steps, 'configured_map_samples': map_samples,
         'steps': planned, 'fraction': planned / steps, 'eval': cheaper if cheap else {},
         'fits': fits, 'probe_s': probe_s, 'planned_at': planned_at,
         'schedule': [[0, planned]], 'checks': [], 'cheaper_eval': cheaper or {},
         'estimated_s': estimate(timings, planned, bool(cheap)),
         'estimated_configured_s': estimate(timings, steps),
         'probe_steps': PROBE_STEPS, 'probe_windows': PROBE_WINDOWS, 'timings': timings}
  shown = ', '.join(f'{name} {t["seconds_per_step"] * 1e3:.0f} ms' for name, t in timings.items())
  eval_s = sum(t['eval_s'] for t in timings.values())
  chosen = f'{planned} steps (1/{2**halvings})' + (
      f', evaluated with {cheaper["map_samples"]} map sample(s) instead of {map_samples}'
      if cheap else '')
  if fits:
    logging.info('Time budget %.0f s: a training step takes %s here; %d steps and evaluation '
                 '(~%.0f s) would take ~%.0f s, so each model trains %s, ~%.0f s with '
                 'evaluation.', budget, shown, steps, eval_s, out['estimated_configured_s'],
                 chosen, out['estimated_s'])
  else:
    logging.warning('Time budget %.0f s: a training step takes %s here; even %s take ~%.0f s '
                    'with evaluation. Training them; raise config.train.time_budget_s or lower '
                    'config.train.steps.', budget, shown, chosen, out['estimated_s'])
  if par.is_writer:
    wd.write_json(path, out)
  return out


class Deadline:
  """A fresh plan's checks of the main model's own training speed.

  The probe's few steps can misjudge a run: a machine still writing out an install, other
  load, a slower pace once training runs for minutes. So at :data:`CHECK_FRACTIONS` of the
  planned steps the main model's training pauses (a checkpoint: ``stop_at`` of
  :func:`vae_qc.train.train`), and its metrics lines since the previous pause give its
  seconds per step here. The other models' steps and evaluation are scaled by the same
  ratio to the probe, and the run from now on is compared with what is left of the budget.
  Where it does not fit, the run takes the cheaper evaluation first (where there is one
  and the plan has not taken it), then the most steps that fit (at least S / 2**MAX_HALVINGS
  and one more than are done; the plan is kept when that is above
  :data:`CHECK_TOLERANCE` of it). Every model trains that many; the main model's cosine
  continues to 0 at the new end (the plan's ``schedule``,
  :func:`vae_qc.train.replanned_cosine`), so the run stays the recipe at a shorter length.
  A check only shortens a run. The plan file records each check (``checks``), and a resumed
  run trains as planned; it does not check, as the time before its resumption is unknown.
  """

  clock = staticmethod(time.time)  # the budget's clock (planned_at is one of its readings)

  def __init__(self, plan_: dict[str, Any], workdir: str, par):
    self.plan, self.path, self.par = plan_, os.path.join(workdir, FILE), par
    self.marks: list[tuple[int, float]] = []  # (step, time.perf_counter()) of metrics lines
    self.done = 0  # the step of the last check

  @classmethod
  def start(cls, plan_: dict[str, Any] | None, workdir: str, par, since: float
            ) -> 'Deadline | None':
    """The checks of ``plan_`` when it was made at ``since`` (a ``time.time()``) or later,
    by this run; None for no plan or one read back on a resumption."""
    if plan_ is None or plan_.get('planned_at', -1.0) < since:
      return None
    return cls(plan_, workdir, par)

  def observe(self, step: int, now: float) -> None:
    """A metrics line of the main model at ``step`` (``on_log`` of train.train)."""
    self.marks.append((step, now))

  def next_stop(self) -> int | None:
    """The step of the next check (None: none left before the planned end)."""
    first = int(self.plan['schedule'][0][1])
    for f in CHECK_FRACTIONS:
      at = int(round(f * first))
      if self.done < at < int(self.plan['steps']):
        return at
    return None

  def check(self, done: int) -> bool:
    """The check after ``done`` steps of the main model: updates (and writes) the plan;
    True where it changed the number of steps."""
    marks = [m for m in self.marks if m[0] > self.done]
    self.marks, self.done = [], done
    plan_, timings = self.plan, self.plan['timings']
    steps, cheap = int(plan_['steps']), bool(plan_['eval'])
    record: dict[str, Any] = {'at_step': done, 'steps_before': steps}
    if len(marks) < 2:
      logging.info('Time budget: no check of the speed at step %d (too few metrics lines).',
                   done)
      plan_['checks'].append(record)
      return False
    (s0, t0), (s1, t1) = marks[0], marks[-1]
    per_step = (t1 - t0) / (s1 - s0)
    ratio = per_step / timings['main']['seconds_per_step']
    others = [t for name, t in timings.items() if name != 'main']
    left = plan_['budget_s'] - (self.clock() - plan_['planned_at'])

    def fixed(cheap_: bool) -> float:  # seconds from now on that do not grow with the steps
      return (sum(t['compile_and_warmup_s'] for t in others) - done * per_step
              + ratio * sum(t.get('cheap_eval_s' if cheap_ else 'eval_s', 0.0)
                            for t in timings.values()))

    slope = per_step + ratio * sum(t['seconds_per_step'] for t in others)
    most = lambda cheap_: int((left - fixed(cheap_)) // slope)  # steps that fit
    fit, before_s = most(cheap), fixed(cheap) + steps * slope
    if fit < CHECK_TOLERANCE * steps and not cheap and plan_.get('cheaper_eval'):
      cheap, fit = True, most(True)
    floor = max(1, int(plan_['configured_steps']) // 2**MAX_HALVINGS, done + 1)
    new = steps if fit >= CHECK_TOLERANCE * steps else max(floor, fit)
    new, cheap = _agreed((new, int(cheap)), self.par)
    cheap = bool(cheap)
    after_s = fixed(cheap) + new * slope  # the estimate of the rest, as decided
    record.update(seconds_per_step=per_step, measured_steps=s1 - s0, ratio_to_probe=ratio,
                  left_s=left, steps=new, cheap_eval=cheap, estimated_left_s=after_s)
    plan_['checks'].append(record)
    changed_eval = cheap != bool(plan_['eval'])
    if new != steps or changed_eval:
      plan_.update(steps=new, fraction=new / plan_['configured_steps'],
                   eval=plan_['cheaper_eval'] if cheap else {},
                   fits=after_s <= left)
      if new != steps:
        plan_['schedule'].append([done, new])
      logging.warning(
          'Time budget: at step %d the main model trains at %.0f ms a step (the probe: %.0f '
          'ms), and %d steps would take ~%.0f s of the %.0f s left; training %d steps%s '
          'instead (the rate\'s cosine now ends there).', done, per_step * 1e3,
          timings['main']['seconds_per_step'] * 1e3, steps, before_s, left, new,
          f' and evaluating with {plan_["cheaper_eval"].get("map_samples")} map sample(s)'
          if changed_eval else '')
    else:
      logging.info('Time budget: at step %d the main model trains at %.0f ms a step (the '
                   'probe: %.0f ms); keeping %d steps (~%.0f s of the %.0f s left).', done,
                   per_step * 1e3, timings['main']['seconds_per_step'] * 1e3, steps, before_s,
                   left)
    if self.par.is_writer:
      wd.write_json(self.path, plan_)
    return new != steps


def planned_config(config: ml_collections.ConfigDict, plan_: dict[str, Any] | None
                   ) -> ml_collections.ConfigDict:
  """``config`` with ``train.steps`` set to the plan's, ``train.epochs`` to 0 and the plan's
  ``config.eval`` fields (itself when there is no plan)."""
  if plan_ is None:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  out.train.steps, out.train.epochs = int(plan_['steps']), 0
  for name, value in (plan_.get('eval') or {}).items():
    out.eval[name] = value
  return out
