"""Training length from a time budget: ``config.train.time_budget_s``.

A recipe's length (``config.train.steps``) is chosen on one machine; on a CPU a few times
slower the same run takes a few times longer. ``time_budget_s`` > 0 is the time that training
and evaluation together may take. The study first times one training step of every model of
the run on this machine (:func:`measure`: each model's compiled step, the one training uses,
over :data:`PROBE_STEPS` steps of real batches, after :data:`WARMUP_STEPS` that include its
compilation), and trains

    S / 2**j steps, the smallest j ≤ :data:`MAX_HALVINGS` whose estimate
    Σ_models (compile_and_warmup_s + steps · seconds_per_step + eval_s)
    fits in what is left of time_budget_s after this timing,

(:func:`choose`), eval_s being the model's share of evaluation, estimated from its step's time
(:func:`eval_seconds`: the inputs evaluation passes through it and the samples of each pass),
and S the run's length in steps (``train.steps``, or ``train.epochs``
whole passes over the training images). Every model of the run (the main one and
``config.data.scales``; a background model too, untimed) trains that many steps and a cosine
rate decays over them, so a shorter run is the recipe at a shorter length, not a cut-off
run. Where even S / 2**MAX_HALVINGS does not fit, it trains that and says so. The plan goes to
``<workdir>/train_plan.json`` before training and is read back when the run resumes, so a
resumed run trains the steps it planned (it plans again only when S or ``time_budget_s``
changed). The step count depends on the machine's speed (and, near a boundary, on its
load): the plan file and ``results.json`` (``train.plan``) say which was taken. With
``time_budget_s = 0`` (the default) nothing is measured and the run trains S steps.
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

from vae_qc import train as train_lib
from vae_qc import workdir as wd
from vae_qc.errors import ConfigError

FILE = 'train_plan.json'
WARMUP_STEPS = 3  # the first compiles the step; timed apart, as the run compiles it again
PROBE_STEPS = 20
MAX_HALVINGS = 3  # at most config.train.steps / 8


# Evaluation, in training steps' worth: a pass of K samples over a model input runs the encoder
# once and the decoder K times, forward only; a training step runs both forward and backward
# (about three forward passes) once. So a pass costs about (1 + K) / 6 of a training input,
# and with the host's part (stitching, smoothing, metrics, pictures; a fifth of it measured on
# the print recipe) (1 + K) / 5.
EVAL_SAMPLE_COST = 1 / 5


@dataclasses.dataclass(frozen=True)
class Probe:
  """One model of the run to time: its name (the run directory's, '' for the main model), its
  model config, the train config it trains with and its batch transform (random patches);
  and what evaluation will pass through it: ``eval_inputs`` inputs of the training size (tiles,
  or images in units of the training input's pixels), once per entry of ``eval_samples``
  (each pass's samples K: the map pass, and a score pass where the map pass does not give
  the scores)."""
  name: str
  model_cfg: Any
  train_cfg: ml_collections.ConfigDict
  transform: Callable[[np.ndarray, int], np.ndarray] | None
  eval_inputs: int = 0
  eval_samples: tuple[int, ...] = ()


def check(train_cfg) -> float:
  """``config.train.time_budget_s`` (0: off); ConfigError when it is negative."""
  budget = float(train_cfg.get('time_budget_s', 0.0) or 0.0)
  if budget < 0:
    raise ConfigError(f'config.train.time_budget_s must be >= 0 (0: no budget), got {budget}.')
  return budget


def measure(probe: Probe, images: np.ndarray, seed: int, par) -> dict[str, float]:
  """{'compile_and_warmup_s', 'seconds_per_step'} of ``probe``'s training step on ``images``
  [N, H, W, C] (batches as training draws them; nothing is kept)."""
  tc = probe.train_cfg
  optimizer = train_lib.make_optimizer(tc, WARMUP_STEPS + PROBE_STEPS)  # the run's structure
  step_fn = train_lib.compile_train_step(probe.model_cfg, optimizer, tc.num_samples,
                                         shardings=par.train_step_shardings)
  state = par.replicate(train_lib.create_train_state(probe.model_cfg, optimizer,
                                                     jax.random.key(seed)))
  key = par.replicate(jax.random.key(seed))
  t0 = time.perf_counter()
  t1 = t0
  for i, x in enumerate(train_lib.batches(images, tc.batch_size, seed, 0,
                                          WARMUP_STEPS + PROBE_STEPS, probe.transform)):
    if i == WARMUP_STEPS:
      jax.block_until_ready(state)
      t1 = time.perf_counter()
    state, _ = step_fn(state, par.put_batch(x), key)
  jax.block_until_ready(state)
  t2 = time.perf_counter()
  return {'compile_and_warmup_s': t1 - t0, 'seconds_per_step': (t2 - t1) / PROBE_STEPS}


def eval_seconds(probe: Probe, timing: dict[str, float]) -> float:
  """Estimated seconds of evaluation's passes through ``probe``'s model, from its training
  step's time (:data:`EVAL_SAMPLE_COST`)."""
  per_input = timing['seconds_per_step'] / probe.train_cfg.batch_size
  return probe.eval_inputs * per_input * sum((1 + k) * EVAL_SAMPLE_COST
                                             for k in probe.eval_samples)


def estimate(timings: dict[str, dict[str, float]], steps: int) -> float:
  """Seconds to train every timed model ``steps`` steps, compilation included, and to
  evaluate the run (each timing's ``eval_s``)."""
  return sum(t['compile_and_warmup_s'] + steps * t['seconds_per_step'] + t.get('eval_s', 0.0)
             for t in timings.values())


def choose(timings: dict[str, dict[str, float]], steps: int, budget_s: float
           ) -> tuple[int, int, bool]:
  """(steps to train, halvings j, whether they fit): steps // 2**j for the smallest
  j ≤ MAX_HALVINGS whose :func:`estimate` is ≤ ``budget_s`` (j = MAX_HALVINGS, not fitting,
  when none is)."""
  for j in range(MAX_HALVINGS + 1):
    planned = max(1, steps // 2**j)
    if estimate(timings, planned) <= budget_s:
      return planned, j, True
  return max(1, steps // 2**MAX_HALVINGS), MAX_HALVINGS, False


def _agreed(value: int, par) -> int:
  """Process 0's ``value`` on every process (all train the same steps)."""
  if par.process_count == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def plan(config: ml_collections.ConfigDict, workdir: str, images: np.ndarray,
         probes: Sequence[Probe], par) -> dict[str, Any] | None:
  """The run's training plan (None without a budget): read from ``workdir`` when it was made
  for this ``train.steps`` and budget, else measured (:func:`measure`, every probe), chosen
  (:func:`choose`) and written there by the writing process."""
  budget = check(config.train)
  if not budget:
    return None
  steps = train_lib.num_steps(config.train, len(images))  # set by train.steps or train.epochs
  path = os.path.join(workdir, FILE)
  if os.path.exists(path):
    saved = wd.read_json(path)
    if saved.get('configured_steps') == steps and saved.get('budget_s') == budget:
      logging.info('Training plan (%s): %d of %d steps, as planned before this resumption.',
                   path, saved['steps'], steps)
      return saved
    logging.info('Training plan (%s) was made for %s steps and a budget of %s s; planning '
                 'again for %d steps and %g s.', path, saved.get('configured_steps'),
                 saved.get('budget_s'), steps, budget)
  t0 = time.perf_counter()
  timings = {}
  for p in probes:
    timing = measure(p, images, config.seed, par)
    timings[p.name or 'main'] = dict(timing, eval_s=eval_seconds(p, timing),
                                     eval_inputs=p.eval_inputs,
                                     eval_samples=list(p.eval_samples))
  probe_s = time.perf_counter() - t0  # spent already: the rest of the budget is what is left
  planned, halvings, fits = choose(timings, steps, budget - probe_s)
  planned = _agreed(planned, par)
  out = {'budget_s': budget, 'configured_steps': steps, 'steps': planned,
         'fraction': planned / steps, 'fits': fits, 'probe_s': probe_s,
         'estimated_s': estimate(timings, planned),
         'estimated_configured_s': estimate(timings, steps),
         'probe_steps': PROBE_STEPS, 'timings': timings}
  shown = ', '.join(f'{name} {t["seconds_per_step"] * 1e3:.0f} ms' for name, t in timings.items())
  eval_s = sum(t['eval_s'] for t in timings.values())
  if fits:
    logging.info('Time budget %.0f s: a training step takes %s here; %d steps and evaluation '
                 '(~%.0f s) would take ~%.0f s, so each model trains %d steps (1/%d), ~%.0f s '
                 'with evaluation.', budget, shown, steps, eval_s, out['estimated_configured_s'],
                 planned, 2**halvings, out['estimated_s'])
  else:
    logging.warning('Time budget %.0f s: a training step takes %s here; even %d steps (1/%d of '
                    '%d) and evaluation (~%.0f s) take ~%.0f s. Training %d steps; raise '
                    'config.train.time_budget_s or lower config.train.steps.', budget, shown,
                    planned, 2**halvings, steps, eval_s, out['estimated_s'], planned)
  if par.is_writer:
    wd.write_json(path, out)
  return out


def planned_config(config: ml_collections.ConfigDict, plan_: dict[str, Any] | None
                   ) -> ml_collections.ConfigDict:
  """``config`` with ``train.steps`` set to the plan's and ``train.epochs`` to 0 (itself when
  there is no plan)."""
  if plan_ is None:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  out.train.steps, out.train.epochs = int(plan_['steps']), 0
  return out
