"""Training: a TrainState, a pure compiled ``train_step``, and the checkpointed loop.

The loss is the negative ELBO with K = ``config.train.num_samples`` reparameterised samples
(K = 1 in the paper). No PRNG key lives in the state: the step's key is
``fold_in(base_key, step)`` and the data order of epoch e is a permutation seeded by
(seed, e), so a resumed run repeats exactly what an uninterrupted one does.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from vae_qc import config as config_lib
from vae_qc import estimators
from vae_qc import inpaint as inpaint_lib
from vae_qc import likelihoods
from vae_qc import models
from vae_qc import parallel as parallel_lib
from vae_qc import prefetch
from vae_qc import workdir as wd
from vae_qc.errors import ConfigError, Preempted, TrainingError, VaeQcError


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32
  params: Any
  batch_stats: Any
  opt_state: Any
  num_skipped: jax.Array  # [] int32: updates skipped for a non-finite loss or gradient
  first_bad_step: jax.Array  # [] int32: the first such step, -1 if none

  @property
  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


def model_config(config: ml_collections.ConfigDict, image_shape) -> models.ModelConfig:
  m = config.model
  return models.ModelConfig(image_shape=image_shape, blocks=m.blocks, fc=m.fc, latent=m.latent,
                            norm=m.norm, likelihood=m.likelihood, sigma=m.sigma,
                            arch=m.get('arch', 'global'), inpaint=m.get('inpaint', 0))


LR_SCHEDULES = ('constant', 'cosine')


def check_length(train_cfg) -> int:
  """``config.train.steps`` (0: the length is ``epochs``), after checking that exactly one of
  ``steps`` and ``epochs`` sets the length of training (ConfigError otherwise)."""
  steps, epochs = int(train_cfg.get('steps', 0) or 0), int(train_cfg.epochs)
  if steps < 0 or epochs < 0:
    raise ConfigError(f'config.train.steps and config.train.epochs must be >= 0, got steps='
                      f'{steps}, epochs={epochs}.')
  if steps and epochs:
    raise ConfigError(
        f'config.train.steps={steps} and config.train.epochs={epochs} both set the length of '
        'training; set one and the other to 0 (e.g. --config.train.steps=0 '
        f'--config.train.epochs={epochs}, or --config.train.epochs=0 '
        f'--config.train.steps={steps}).')
  return steps


def num_steps(train_cfg, num_images: int) -> int:
  """Training steps of a run on ``num_images`` images: ``steps`` when it is > 0 (the same
  training whatever the number of images), else whole batches × ``epochs``."""
  return check_length(train_cfg) or num_images // train_cfg.batch_size * train_cfg.epochs


def make_optimizer(train_cfg, total_steps: int = 0,
                   schedule: Sequence[tuple[int, int]] | None = None
                   ) -> optax.GradientTransformation:
  """Adam at ``config.train.learning_rate``, held (``lr_schedule='constant'``) or decayed to 0
  by a cosine over ``total_steps`` (``'cosine'``). ``total_steps`` only sets the rate, not the
  optimizer state's structure: callers that only restore a checkpoint may leave it 0.

  ``schedule``: a cosine whose end moved while it ran (a time budget's check,
  ``vae_qc.budget``), as (step, total) pairs, the first (0, the first total): see
  :func:`replanned_cosine`. One pair, or none, is the plain cosine over ``total_steps``.
  """
  if not train_cfg.learning_rate > 0:
    raise ConfigError(f'config.train.learning_rate must be > 0, got {train_cfg.learning_rate}.')
  kind = train_cfg.get('lr_schedule', 'constant')
  if kind == 'constant':
    return optax.adam(train_cfg.learning_rate)
  if kind == 'cosine':
    if schedule is not None and len(schedule) > 1:
      return optax.adam(replanned_cosine(train_cfg.learning_rate, schedule))
    return optax.adam(optax.cosine_decay_schedule(train_cfg.learning_rate, max(total_steps, 1)))
  raise ConfigError(f'config.train.lr_schedule must be one of {", ".join(LR_SCHEDULES)}; '
                    f'got {kind!r}.')


def replanned_cosine(learning_rate: float, schedule: Sequence[tuple[int, int]]
                     ) -> optax.Schedule:
  """A cosine decay to 0 whose end moved while it ran: ``schedule`` = ((0, T_0), (a_1, T_1),
  ...), from step a_i on the run ends at T_i (a_i < a_{i+1}, a_i < T_i). The rate is
  lr · (1 + cos(π p)) / 2 in the progress p, which runs from 0 at step 0 to 1 at the last
  end: c / T_0 before a_1, and from a_i on the rest of the way from p(a_i) to 1, evenly over
  the T_i − a_i steps left. The rate is continuous where an end moved, and with one pair it
  is ``optax.cosine_decay_schedule(learning_rate, T_0)``."""
  starts = [int(a) for a, _ in schedule]
  ends = [int(t) for _, t in schedule]
  if starts[0] != 0 or any(a >= t for a, t in zip(starts, ends)) or any(
      a >= b for a, b in zip(starts, starts[1:])):
    raise ValueError(f'a replanned schedule needs (0, T_0), then rising steps a_i < T_i; got '
                     f'{list(schedule)}.')
  at = [0.0]  # the progress where each piece starts
  for i in range(1, len(starts)):
    at.append(at[-1] + (1 - at[-1]) * (starts[i] - starts[i - 1]) / (ends[i - 1] - starts[i - 1]))

  def rate(count):
    c = jnp.asarray(count, jnp.float32)
    progress = c / ends[0]
    for a, t, p in zip(starts[1:], ends[1:], at[1:]):
      progress = jnp.where(c >= a, p + (1 - p) * (c - a) / (t - a), progress)
    return learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))

  return rate


def create_train_state(model_cfg: models.ModelConfig, optimizer, key: jax.Array) -> TrainState:
  variables = models.init(model_cfg, key)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=optimizer.init(params), num_skipped=jnp.zeros((), jnp.int32),
                    first_bad_step=jnp.full((), -1, jnp.int32))


def loss_fn(params, batch_stats, model_cfg: models.ModelConfig, x: jax.Array, key: jax.Array,
            num_samples: int):
  """Negative ELBO averaged over the batch, in train mode (batch statistics).

  x [B, H, W, C]. Returns (loss, (new_batch_stats, metrics)).
  """
  likelihood = likelihoods.get(model_cfg.likelihood, model_cfg.sigma)
  noise = jax.random.normal(key, (num_samples, x.shape[0], model_cfg.num_latents), x.dtype)
  x_in = x
  if model_cfg.inpaint:  # the encoder sees x with one group of cells hidden (vae_qc.inpaint)
    x_in = inpaint_lib.hide(x, inpaint_lib.random_hidden(jax.random.fold_in(key, 1), *x.shape[:3],
                                                         model_cfg.inpaint))
  (posterior, out), updates = models.VAE(model_cfg).apply(
      {'params': params, 'batch_stats': batch_stats}, x_in, noise, train=True,
      mutable=['batch_stats'])
  log_lik = jnp.mean(jnp.sum(likelihood.log_prob(out, x), axis=(-3, -2, -1)), axis=0)  # [B]
  kl = estimators.kl_standard_normal(posterior)  # [B]
  elbo = log_lik - kl
  loss = -jnp.mean(elbo)
  return loss, (updates.get('batch_stats', {}), {'loss': loss, 'elbo': jnp.mean(elbo),
                                                 'log_lik': jnp.mean(log_lik), 'kl': jnp.mean(kl)})


def train_step(state: TrainState, x: jax.Array, base_key: jax.Array, *,
               model_cfg: models.ModelConfig, optimizer: optax.GradientTransformation,
               num_samples: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam step on −ELBO. Pure: a non-finite loss or gradient leaves the state unchanged
  (but for the skip counters), so the caller can stop or go on with the last good parameters.

  x [B, H, W, C] float32 in [0, 1]; base_key: the training key (folded with the step).
  """
  key = jax.random.fold_in(base_key, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, model_cfg, x,
                                                  key, num_samples)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(batch_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
      num_skipped=state.num_skipped + (~finite).astype(jnp.int32),
      first_bad_step=jnp.where((state.first_bad_step < 0) & ~finite, state.step,
                               state.first_bad_step))
  return new_state, dict(metrics, grad_norm=grad_norm)


def compile_train_step(model_cfg, optimizer, num_samples: int = 1, shardings=None) -> Callable:
  """``train_step`` jit-compiled once; the state argument is donated (updated in place).

  ``shardings``: optional (state, batch, key) input shardings, e.g.
  ``vae_qc.parallel.Parallel.train_step_shardings``. Call as ``step_fn(state, x [B, H, W, C],
  key)``.
  """
  fn = functools.partial(train_step, model_cfg=model_cfg, optimizer=optimizer,
                         num_samples=num_samples)
  if shardings is None:
    return jax.jit(fn, donate_argnums=(0,))
  return jax.jit(fn, donate_argnums=(0,), in_shardings=shardings,
                 out_shardings=(shardings[0], None))


# ------------------------------------------------------------------------------- data order
def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of epoch ``epoch``: a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch, 7]).permutation(num_examples)


def batches(images: np.ndarray, batch_size: int, seed: int, start_step: int,
            num_steps: int, transform: Callable[[np.ndarray, int], np.ndarray] | None = None
            ) -> Iterator[np.ndarray]:
  """Batches for steps [start_step, num_steps): [B, H, W, C], incomplete last batch dropped.

  ``transform(batch, step)``, if given, maps each batch, e.g. to random patches
  (``vae_qc.data.tiling.random_patches``); it must be a function of (batch, step) alone.
  """
  per_epoch = len(images) // batch_size
  step = start_step
  while step < num_steps:
    epoch, i = divmod(step, per_epoch)
    order = epoch_order(len(images), seed, epoch)
    for j in range(i, per_epoch):
      if step >= num_steps:
        return
      batch = images[order[j * batch_size:(j + 1) * batch_size]]
      yield batch if transform is None else transform(batch, step)
      step += 1


# ------------------------------------------------------------------------------- checkpoints
def checkpoint_manager(directory: str, train_cfg,
                       cleanup_tmp: bool = False) -> ocp.CheckpointManager:
  """Orbax manager of ``directory``. A save writes ``<step>.orbax-checkpoint-tmp`` and renames
  it to ``<step>`` when complete, so a killed save leaves no step behind; ``cleanup_tmp``
  deletes such leftovers (only the training run may: a reader such as predict.py would delete
  the save in progress of a run still training). Saves are synchronous: ``save_checkpoint``
  waits anyway, and orbax's async mode hangs ~5 min at exit when the step directory cannot
  be created (disk full, permissions)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=train_cfg.max_checkpoints, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=cleanup_tmp)
  try:
    # The handler named up front lets ``item_metadata`` read a checkpoint's shapes before a
    # restore (``_check_fits``); without it a fresh manager's metadata is None.
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())
  except OSError as e:
    raise VaeQcError(f'cannot create checkpoints in {directory}: {e}. Choose a writable '
                     '--workdir.') from e


def _checkpoint_name(manager: ocp.CheckpointManager) -> str:
  step = manager.latest_step()
  return 'none yet (a re-run starts from step 0)' if step is None else f'step {step}'


def _resume_point(manager: ocp.CheckpointManager) -> str:
  step = manager.latest_step()
  return ('there is no complete checkpoint yet, so training restarts from step 0'
          if step is None else f'training resumes from the last complete checkpoint, step {step}')


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState) -> None:
  step = int(state.step)
  try:
    manager.save(step, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()
  except (OSError, ValueError) as e:  # tensorstore reports write errors as ValueError
    raise TrainingError(f'saving the checkpoint of step {step} in {manager.directory} failed: '
                        f'{e}. Free disk space (or fix the permissions) and re-run the same '
                        f'command; {_resume_point(manager)}.') from e


def restore_latest(directory: str, model_cfg: models.ModelConfig, optimizer, train_cfg
                   ) -> TrainState | None:
  """The latest checkpoint in ``directory`` (read only), or None when it holds none."""
  template = create_train_state(model_cfg, optimizer, jax.random.key(0))
  manager = checkpoint_manager(directory, train_cfg)
  try:
    return None if manager.latest_step() is None else restore_checkpoint(manager, template)
  finally:
    manager.close()


def _shapes(tree) -> dict[str, tuple]:
  """{path: shape} of ``tree``'s ``params`` and ``batch_stats`` leaves (dtypes may differ:
  a restore casts them)."""
  return {'/'.join([part] + [str(getattr(k, 'key', k)) for k in path]): tuple(leaf.shape)
          for part in ('params', 'batch_stats')
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree.get(part, {}))[0]}


def _check_fits(manager: ocp.CheckpointManager, step: int, template: TrainState) -> None:
  """TrainingError naming the weights whose shapes differ, when the checkpoint of ``step`` was
  saved by another model. Checked from the checkpoint's metadata, before any array is read:
  a restore that fails inside orbax leaves a read coroutine that is never awaited."""
  try:
    saved = manager.item_metadata(step)
    saved = _shapes(dict(getattr(saved, 'tree', saved)))
  except Exception:  # pylint: disable=broad-except  # no readable metadata: restore decides
    return
  if not saved:
    return
  wanted = _shapes(flax.serialization.to_state_dict(template))
  names = sorted(set(saved) | set(wanted), key=lambda n: (n.startswith('batch_stats'), n))
  differ = [f'{name}: checkpoint {saved.get(name, "none")}, model {wanted.get(name, "none")}'
            for name in names if saved.get(name) != wanted.get(name)]
  if differ:
    raise TrainingError(
        f'the checkpoint of step {step} in {manager.directory} was saved by another model '
        f'({len(differ)} weights differ in shape, e.g. {"; ".join(differ[:3])}). The model '
        'settings changed since it was saved (e.g. resumed with --allow_config_change), so the '
        'checkpoint does not fit the model: use a new --workdir, or the model settings the run '
        'was trained with.')


def restore_checkpoint(manager: ocp.CheckpointManager, template: TrainState) -> TrainState:
  """The latest checkpoint restored into ``template``'s structure (``template`` if none)."""
  step = manager.latest_step()
  if step is None:
    return template
  _check_fits(manager, step, template)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many types
    older = [s for s in manager.all_steps() if s < step]
    fallback = (f'delete {os.path.join(manager.directory, str(step))} to resume from step '
                f'{max(older)}' if older else 'use a new --workdir')
    raise TrainingError(
        f'cannot restore the checkpoint of step {step} in {manager.directory} '
        f'({type(e).__name__}: {str(e)[:300]}). If the model config changed (resumed with '
        f'--allow_config_change), the checkpoint does not fit the model: use a new --workdir. '
        f'If the checkpoint is damaged, {fallback}.') from e


# -------------------------------------------------------------------------------- preemption
class _Preemption:
  """Whether a preemption notice asks the run to stop, and at which step.

  One process: :func:`preemption_signals` installs Python handlers that record the signal;
  :meth:`reached` is then true at the next check, i.e. after the step that was running.
  Several processes (``jax.distributed``): JAX's preemption service catches SIGTERM on any
  process, tells the others through the coordination service and agrees on one step
  (``multihost_utils.reached_preemption_sync_point``, via orbax's
  ``CheckpointManager.reached_preemption``), so every process saves at that same step. The
  other configured signals are forwarded to it as SIGTERM.
  """

  def __init__(self):
    self.signum: int | None = None  # the signal received (this process, Python handler)
    self.count = 0  # checks so far: the sync point needs an increasing id per check
    self._forwarded = False

  @staticmethod
  def multi_process() -> bool:
    """Whether ``jax.distributed`` runs (then JAX's preemption service handles SIGTERM).
    Safe in a signal handler: it does not start JAX's backends."""
    return parallel_lib.is_initialized()

  def handle(self, signum, frame) -> None:
    del frame
    if self.multi_process() and not self._forwarded:
      self._forwarded = True  # JAX's SIGTERM handler (C++) starts the agreement protocol
      signal.raise_signal(signal.SIGTERM)
    if self.signum is None:
      self.signum = signum
      # No logging here: a handler may run inside a logging call of the main thread.

  def reached(self, step: int | None = None,
              manager: ocp.CheckpointManager | None = None) -> bool:
    """Whether to stop now. ``step``: the training step just done (None: the next check id);
    every process must call this at the same points (it is collective after a notice)."""
    self.count = self.count + 1 if step is None else max(self.count, int(step))
    if not self.multi_process():
      return self.signum is not None
    if self.signum is not None and not self._forwarded:  # received before jax.distributed
      self._forwarded = True
      signal.raise_signal(signal.SIGTERM)
    if manager is not None:
      return manager.reached_preemption(self.count)
    return ocp.multihost.reached_preemption(self.count)

  def describe(self) -> str:
    if self.signum is not None:
      return signal.Signals(self.signum).name
    return 'a preemption notice (JAX preemption service)'


PREEMPTION = _Preemption()


def parse_signals(names: str) -> list[signal.Signals]:
  """'TERM,USR1' (or 'SIGTERM, SIGUSR1') -> the signals; '' -> none. ConfigError if unknown."""
  out = []
  for name in str(names).split(','):
    name = name.strip().upper()
    if not name:
      continue
    try:
      out.append(signal.Signals[name if name.startswith('SIG') else 'SIG' + name])
    except KeyError:
      raise ConfigError(f'config.train.preemption_signals: unknown signal {name!r}; use names '
                        "like 'TERM,USR1' ('' for none).") from None
    if out[-1] in (signal.SIGKILL, signal.SIGSTOP):
      raise ConfigError(f'config.train.preemption_signals: {name} cannot be caught.')
  return out


@contextlib.contextmanager
def preemption_signals(names: str = 'TERM,USR1'):
  """Within the block, the signals ``names`` (``config.train.preemption_signals``) make the
  training loop and scoring stop at the next safe point: training saves a checkpoint at the
  step it is at, scoring keeps the batches scored so far, and :class:`Preempted` is raised
  (the entry points exit with status ``errors.PREEMPTED_EXIT_STATUS``). Outside the main
  thread it does nothing (Python only handles signals there). The previous handlers are
  restored on exit."""
  sigs = parse_signals(names)
  PREEMPTION.signum = None  # a notice of an earlier block in this process is spent
  if threading.current_thread() is not threading.main_thread():
    yield PREEMPTION
    return
  previous = {s: signal.signal(s, PREEMPTION.handle) for s in sigs}
  try:
    yield PREEMPTION
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    PREEMPTION.signum = None  # the notice is spent: a later run in this process goes on


# ------------------------------------------------------------------------------------- loop
def _lock_workdir(workdir: str, is_writer: bool) -> None:
  """The writer takes the lock; with several processes, all learn whether it got it."""
  error = None
  if is_writer:
    try:
      wd.lock(workdir)
    except VaeQcError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is None and not int(ok):
      raise wd.WorkdirInUse(f'workdir {workdir} is in use by another run (process 0 says '
                            'which); choose another --workdir.')
  if error is not None:
    raise error


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict,
                    allow_config_change: bool = False, is_writer: bool = True) -> None:
  """Creates ``workdir``, takes its writer lock (``workdir.lock``: a second run on it fails at
  once, naming the first) and writes config.json; on resume, refuses a config that differs in
  a field that changes the trained model (unless ``allow_config_change``). Every process
  checks; only the writer (process 0) locks and writes."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise VaeQcError(f'cannot create workdir {workdir!r}: {e}. Choose a writable --workdir.') from e
  _lock_workdir(workdir, is_writer)
  path = os.path.join(workdir, 'config.json')
  current = config_lib.to_dict(config)
  if os.path.exists(path):
    try:
      saved = wd.read_json(path)
    except ValueError:
      saved = None  # an unreadable config.json is replaced
    changed = config_lib.changed_fields(saved or {}, current) if saved else []
    if changed and not allow_config_change:
      a, b = config_lib.flatten(saved), config_lib.flatten(current)
      detail = '; '.join(f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in changed)
      raise TrainingError(f'workdir {workdir} holds a run with a different config ({detail}). '
                          'Use a new --workdir, or pass --allow_config_change to resume anyway.')
  if is_writer:
    wd.write_json(path, current)


class _MetricsLog:
  """The metrics lines of the loop: the mean of the steps since the last line."""

  def __init__(self, path: str | None, tc, total: int, per_epoch: int, start: int,
               skipped: int):
    self.path, self.tc, self.total, self.per_epoch = path, tc, total, per_epoch
    self.pending: list[dict[str, jax.Array]] = []
    self.t_log, self.step_log, self.last_skipped = time.time(), start, skipped

  def write(self, step: int, state: TrainState, manager: ocp.CheckpointManager) -> None:
    tc, total = self.tc, self.total
    pending = jax.device_get(self.pending)
    summary = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
    self.pending = []
    now = time.time()
    img_per_s = (step - self.step_log) * tc.batch_size / max(now - self.t_log, 1e-9)
    eta = (total - step) * tc.batch_size / max(img_per_s, 1e-9)
    skipped = int(state.num_skipped)
    logging.info('step %d/%d  loss %.3f  elbo %.3f  kl %.3f  %.0f img/s  ETA %.0fs%s', step,
                 total, summary['loss'], summary['elbo'], summary['kl'], img_per_s, eta,
                 f'  skipped {skipped}' if skipped else '')
    if self.path is not None:
      wd.append_jsonl(self.path, dict(step=step, epoch=step / self.per_epoch, **summary,
                                      img_per_s=img_per_s, eta_s=eta, skipped=skipped))
    self.t_log, self.step_log = now, step
    if skipped > self.last_skipped and tc.nan_policy == 'stop':
      raise TrainingError(
          f'non-finite loss or gradient at step {int(state.first_bad_step)}; the update was '
          f'not applied. The last good checkpoint is {_checkpoint_name(manager)} in '
          f'{manager.directory}. Lower config.train.learning_rate, check the data for NaN, '
          "or set config.train.nan_policy='skip' to skip such updates and count them.")
    self.last_skipped = skipped


def train(config: ml_collections.ConfigDict, workdir: str, images: np.ndarray,
          model_cfg: models.ModelConfig, *, step_fn: Callable | None = None,
          put_batch: Callable[[np.ndarray], jax.Array] | None = None,
          put_state: Callable[[Any], Any] | None = None,
          is_writer: bool = True,
          transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
          optimizer: optax.GradientTransformation | None = None, stop_at: int | None = None,
          on_log: Callable[[int, float], None] | None = None) -> TrainState:
  """Trains on ``images`` [N, H, W, C] for :func:`num_steps` steps, resuming from the latest
  checkpoint in ``workdir/checkpoints``; logs to ``workdir/metrics.jsonl``.

  ``step_fn`` / ``put_batch``: a compiled step and a host→device batch placement (the
  sharded ones of ``vae_qc.parallel``); defaults: single-device. ``optimizer``: the one
  ``step_fn`` was compiled with (default :func:`make_optimizer` of the config).
  ``put_state``: places the
  fresh state and the training key before the checkpoint is restored into them
  (``Parallel.replicate``); ``is_writer``: whether this process writes metrics.jsonl;
  ``transform(batch, step)``: applied to each batch (see :func:`batches`).
  ``stop_at``: stops after that step (before the last), with a checkpoint and a metrics line,
  so that the same call resumes it later (a time budget's check, ``vae_qc.budget``).
  ``on_log(step, time.perf_counter())``: called at each metrics line, the step's work done.
  """
  tc = config.train
  if tc.nan_policy not in ('stop', 'skip'):
    raise ConfigError(f"config.train.nan_policy must be 'stop' or 'skip', got {tc.nan_policy!r}.")
  if tc.batch_size < 1 or tc.batch_size > len(images):
    raise ConfigError(f'config.train.batch_size={tc.batch_size} must be between 1 and the '
                      f'number of training images ({len(images)}).')
  per_epoch = len(images) // tc.batch_size
  total = num_steps(tc, len(images))
  if optimizer is None:
    optimizer = make_optimizer(tc, total)
  end = total if stop_at is None else min(total, int(stop_at))
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(model_cfg, optimizer, init_key)
  if put_state is not None:
    state, train_key = put_state(state), put_state(train_key)
  manager = checkpoint_manager(os.path.join(workdir, 'checkpoints'), tc, cleanup_tmp=True)
  try:  # closed on every way out (an error too): an open manager leaks its event loop
    state = restore_checkpoint(manager, state)
    start = int(state.step)
    metrics_path = os.path.join(workdir, 'metrics.jsonl')
    if is_writer:
      wd.trim_jsonl(metrics_path, start)
    if start:
      logging.info('Resuming from the checkpoint of step %d in %s.', start, manager.directory)
    step_fn = step_fn or compile_train_step(model_cfg, optimizer, tc.num_samples)
    put_batch = put_batch or jnp.asarray
    length = (f'config.train.steps; {total / per_epoch:.1f} epochs of {per_epoch}'
              if tc.get('steps', 0) else f'{tc.epochs} epochs × {per_epoch}')
    logging.info('Training %d steps (%s steps of %d images), Adam at %g (%s); %d parameters.',
                 total, length, tc.batch_size, tc.learning_rate, tc.get('lr_schedule', 'constant'),
                 models.num_params(state.variables))
    t_start = time.time()
    log = _MetricsLog(metrics_path if is_writer else None, tc, total, per_epoch, start,
                      int(state.num_skipped))  # skips restored from the checkpoint are not new
    step = start
    # The next batches are gathered and placed on the device while the step runs.
    for x in prefetch.prefetch(batches(images, tc.batch_size, config.seed, start, end,
                                       transform), put_batch, size=2):
      state, metrics = step_fn(state, x, train_key)
      step += 1
      log.pending.append(metrics)
      if step % tc.log_every_steps == 0 or step == end:
        log.write(step, state, manager)
        if on_log is not None:
          on_log(step, time.perf_counter())
      if PREEMPTION.reached(step, manager):  # every process stops at the same step
        if log.pending:
          log.write(step, state, manager)  # the steps since the last line
        if manager.latest_step() != step:
          save_checkpoint(manager, state)
        logging.info('Preempted by %s: stopped after step %d/%d, checkpoint saved in %s. '
                     'Re-run the same command to resume.', PREEMPTION.describe(), step, total,
                     manager.directory)
        logging.flush()
        raise Preempted(f'preempted by {PREEMPTION.describe()} at step {step}/{total}; the '
                        f'checkpoint of step {step} is saved in {manager.directory}. Re-run the '
                        'same command to resume.')
      if step % tc.checkpoint_every_steps == 0 and step < end:
        save_checkpoint(manager, state)
    if manager.latest_step() != int(state.step):
      save_checkpoint(manager, state)
  finally:
    manager.close()
  if int(state.step) < total:
    logging.info('Training paused at step %d of %d after %.0fs.', int(state.step), total,
                 time.time() - t_start)
  else:
    logging.info('Training finished at step %d in %.0fs.', int(state.step),
                 time.time() - t_start)
  return state
