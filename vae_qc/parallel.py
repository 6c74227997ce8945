"""Data parallelism over every device of every process, with ``jax.sharding``.

One 1-D mesh over all devices (``jax.make_mesh``) with the axis ``'data'``: batches are
sharded on it (``[B, ...]`` split in ``num_devices`` row blocks), parameters, batch-norm
statistics and optimizer state are replicated. The train step and the scoring functions are
``jax.jit``-compiled with these shardings (no ``pmap``), so a ``jnp.mean`` over the batch axis
(the loss, the metrics, batch norm's statistics) is over the GLOBAL batch: 1 device, N devices
and N processes compute the same numbers, up to float summation order.

Multi-host: :func:`initialize` starts ``jax.distributed`` from ``config.parallel`` or from the
cluster environment (SLURM, Open MPI), after checking within ``timeout_s`` that the
coordinator can be reached, so a wrong address is a :class:`VaeQcError` in seconds rather than
a hang or an abort. Every process then holds the same full dataset on the host but places only
its own rows of each global batch on its devices (:meth:`Parallel.put_batch`, through
``jax.make_array_from_process_local_data``); outputs are gathered back to every process
(:meth:`Parallel.to_host`), and only process 0 writes files (:attr:`Parallel.is_writer`).

Typical use (what ``vae_qc.study`` does)::

  par = parallel.setup(config)              # distributed init (if any) + mesh
  par.check_batch_size(config.train.batch_size)
  step_fn = train.compile_train_step(model_cfg, optimizer, num_samples,
                                     shardings=par.train_step_shardings)
  state = train.train(..., step_fn=step_fn, put_batch=par.put_batch,
                      put_state=par.replicate, is_writer=par.is_writer)
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from vae_qc.errors import ConfigError, VaeQcError

DATA_AXIS = 'data'

# Defaults of ``config.parallel`` (configs without that section get these).
DEFAULTS = dict(
    distributed='auto',  # auto | on | off
    coordinator_address='',  # host:port of process 0; '' = from the cluster environment
    num_processes=0,  # 0 = from the cluster environment
    process_id=-1,  # -1 = from the cluster environment
    timeout_s=60,  # seconds to reach the coordinator and for all processes to join
    num_devices=0,  # 0 = every device; N = the first N (single process only; for benchmarks)
    cpu_collectives='gloo',  # CPU cross-process collectives: gloo | mpi | none
)


class DistributedError(VaeQcError):
  """Multi-process start-up failed (coordinator unreachable, bad process id, ...)."""


def _settings(parallel_cfg) -> dict[str, Any]:
  s = dict(DEFAULTS)
  if parallel_cfg is not None:
    unknown = sorted(set(parallel_cfg.keys()) - set(DEFAULTS))
    if unknown:
      raise ConfigError(f'unknown config.parallel field(s) {", ".join(unknown)}; valid: '
                        f'{", ".join(sorted(DEFAULTS))}.')
    s.update({k: parallel_cfg[k] for k in parallel_cfg.keys()})
  if s['distributed'] not in ('auto', 'on', 'off'):
    raise ConfigError("config.parallel.distributed must be 'auto', 'on' or 'off', got "
                      f"{s['distributed']!r}.")
  if not s['timeout_s'] > 0:
    raise ConfigError(f"config.parallel.timeout_s must be > 0, got {s['timeout_s']}.")
  return s


# ------------------------------------------------------------------------ multi-process start
def _cluster_num_tasks() -> int:
  """Number of tasks the cluster environment says this job step has (1 if none)."""
  for var in ('SLURM_STEP_NUM_TASKS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    value = os.environ.get(var, '')
    if value.isdigit():
      return int(value)
  return 1


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(':')
  if not sep or not host or not port.isdigit():
    raise ConfigError(f'config.parallel.coordinator_address must be host:port, got '
                      f'{address!r}.')
  return host.strip('[]'), int(port)


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Polls a TCP connection to ``address`` until it succeeds or ``timeout_s`` passes."""
  host, port = _split_address(address)
  deadline = time.monotonic() + timeout_s
  last = None
  while True:
    try:
      with socket.create_connection((host, port), timeout=max(0.1, min(2.0, timeout_s))):
        return
    except OSError as e:
      last = e
    if time.monotonic() >= deadline:
      raise DistributedError(
          f'cannot reach the coordinator (process 0) at {address} within {timeout_s:g} s: '
          f'{last}. Start process 0 first (it listens there), check the host name, port and '
          'firewall, or raise config.parallel.timeout_s.')
    time.sleep(0.2)


def _check_bindable(address: str) -> None:
  """Process 0 listens on the coordinator's port: fail clearly if it cannot."""
  _, port = _split_address(address)
  try:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      s.bind(('', port))
  except OSError as e:
    raise DistributedError(f'process 0 cannot listen on port {port} of the coordinator '
                           f'address {address}: {e}. Choose a free port.') from e


def is_initialized() -> bool:
  """Whether ``jax.distributed`` was initialized in this process."""
  try:
    # jax._src is private and may move: imported where it is needed, not at start-up.
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.client is not None
  except (ImportError, AttributeError):  # pragma: no cover - private API moved
    return False


def initialize(parallel_cfg=None) -> bool:
  """Starts ``jax.distributed`` when ``config.parallel`` or the cluster asks for several
  processes; returns whether it did (or already had).

  Must run before any JAX computation. ``parallel_cfg``: ``config.parallel`` or None.
  Explicit ``coordinator_address``/``num_processes``/``process_id`` win; unset ones come from
  the cluster environment (SLURM with more than one task, Open MPI), as JAX detects them.
  Raises :class:`DistributedError` within about ``timeout_s`` if the coordinator cannot be
  reached, instead of hanging (JAX itself aborts the process in that case).
  """
  s = _settings(parallel_cfg)
  if is_initialized():
    return True
  explicit = bool(s['coordinator_address']) or s['num_processes'] > 1
  if s['distributed'] == 'off' or (s['distributed'] == 'auto' and not explicit
                                   and _cluster_num_tasks() <= 1):
    return False
  address = s['coordinator_address'] or os.environ.get('JAX_COORDINATOR_ADDRESS') or None
  num_processes = s['num_processes'] if s['num_processes'] > 0 else None
  process_id = s['process_id'] if s['process_id'] >= 0 else None
  timeout = int(max(1, round(s['timeout_s'])))
  local_device_ids = None
  if None in (address, num_processes, process_id):
    try:
      from jax._src import clusters  # pylint: disable=g-import-not-at-top  # private, as above
      address, num_processes, process_id, local_device_ids = (
          clusters.ClusterEnv.auto_detect_unset_distributed_params(
              address, num_processes, process_id, None, None, timeout))
    except Exception as e:  # pylint: disable=broad-except
      raise DistributedError(f'cannot work out the multi-process setup from the cluster '
                             f'environment: {e}. Set config.parallel.coordinator_address, '
                             'num_processes and process_id.') from e
  missing = [n for n, v in (('coordinator_address', address), ('num_processes', num_processes),
                            ('process_id', process_id)) if v is None]
  if missing:
    raise DistributedError(f'multi-process run without {", ".join(missing)}: set '
                           f'config.parallel.{missing[0]} (no cluster environment found).')
  if not 0 <= process_id < num_processes:
    raise ConfigError(f'config.parallel.process_id={process_id} must be in [0, '
                      f'num_processes={num_processes}).')
  if process_id == 0:
    _check_bindable(address)
  else:
    _wait_for_coordinator(address, s['timeout_s'])
  if s['cpu_collectives'] not in ('', 'none'):
    jax.config.update('jax_cpu_collectives_implementation', s['cpu_collectives'])
  logging.info('jax.distributed: process %d of %d, coordinator %s.', process_id, num_processes,
               address)
  try:
    jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=timeout)
  except RuntimeError as e:
    raise DistributedError(f'jax.distributed.initialize failed: {e}. It must run before any '
                           'JAX computation in the process (start a fresh process).') from e
  return True


# -------------------------------------------------------------------------------- the mesh
@dataclasses.dataclass(frozen=True)
class Parallel:
  """A 1-D ``'data'`` mesh and the placement / gathering helpers of data parallelism."""
  mesh: jax.sharding.Mesh

  @classmethod
  def create(cls, devices: Sequence[jax.Device] | None = None) -> 'Parallel':
    """A mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    mesh = jax.make_mesh((len(devices),), (DATA_AXIS,),
                         axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    return cls(mesh)

  # --- facts
  @property
  def num_devices(self) -> int:
    return int(self.mesh.size)

  @property
  def process_index(self) -> int:
    return jax.process_index()

  @property
  def process_count(self) -> int:
    return jax.process_count()

  @property
  def is_writer(self) -> bool:
    """Only process 0 writes logs, metrics, results and plots."""
    return jax.process_index() == 0

  @property
  def batch_sharding(self) -> NamedSharding:
    """Leading (batch) axis split over ``'data'``; other axes whole."""
    return NamedSharding(self.mesh, P(DATA_AXIS))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def describe(self) -> str:
    kinds = sorted({d.platform for d in self.mesh.devices.flat})
    return (f'{self.num_devices} {"/".join(kinds)} device(s) in {self.process_count} '
            f'process(es); this is process {self.process_index}')

  # --- batch sizes
  def check_batch_size(self, batch_size: int, what: str = 'config.train.batch_size') -> None:
    """A global batch must split evenly over the devices: ConfigError naming both numbers."""
    n = self.num_devices
    if batch_size % n:
      lower, upper = (batch_size // n) * n, -(-batch_size // n) * n
      options = ' or '.join(str(v) for v in (lower, upper) if v > 0)
      raise ConfigError(
          f'{what}={batch_size} is not divisible by the number of devices ({n}): the global '
          f'batch is split evenly over the devices. Set {what} to a multiple of {n} (e.g. '
          f'{options}), or run on a device count that divides {batch_size} (on one machine: '
          'CUDA_VISIBLE_DEVICES, or config.parallel.num_devices).')

  def padded_batch_size(self, batch_size: int) -> int:
    """``batch_size`` rounded up to a multiple of the device count (for padded scoring)."""
    n = self.num_devices
    return -(-batch_size // n) * n

  def local_rows(self, batch_size: int) -> np.ndarray:
    """Indices ``[batch_size // process_count]`` of a global batch this process holds."""
    self.check_batch_size(batch_size)
    index_map = self.batch_sharding.addressable_devices_indices_map((batch_size,))
    rows = sorted({i for idx in index_map.values() for i in range(batch_size)[idx[0]]})
    return np.asarray(rows, np.int64)

  # --- placement
  def put_batch(self, batch) -> Any:
    """A global batch, whole on every process's host → arrays sharded on ``'data'``.

    ``batch``: a pytree of numpy arrays ``[B, ...]``, the same on every process. Each process
    takes only its :meth:`local_rows` and places them on its own devices
    (``jax.make_array_from_process_local_data``). Returns global ``jax.Array``s ``[B, ...]``.
    """
    size = self._batch_size(batch)
    if self.process_count == 1:
      self.check_batch_size(size, 'the batch size')
      return jax.device_put(batch, self.batch_sharding)
    rows = self.local_rows(size)
    return self.put_local_batch(jax.tree_util.tree_map(lambda x: np.asarray(x)[rows], batch),
                                size)

  def put_local_batch(self, local_batch, global_size: int | None = None) -> Any:
    """This process's rows of a global batch → global arrays sharded on ``'data'``.

    ``local_batch``: a pytree of numpy arrays ``[B_local, ...]``, the rows
    :meth:`local_rows` of the global batch (for pipelines that read only their slice).
    ``global_size``: B (default ``B_local * process_count``). Returns arrays ``[B, ...]``.
    """
    local_size = self._batch_size(local_batch)
    global_size = global_size or local_size * self.process_count
    self.check_batch_size(global_size, 'the global batch size')
    if local_size != len(self.local_rows(global_size)):
      raise VaeQcError(f'process {self.process_index} got {local_size} rows of a global batch '
                       f'of {global_size}; it holds {len(self.local_rows(global_size))}.')
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(
            self.batch_sharding, np.asarray(x), (global_size,) + np.shape(x)[1:]), local_batch)

  @staticmethod
  def _batch_size(batch) -> int:
    sizes = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(batch)}
    if len(sizes) != 1:
      raise VaeQcError(f'a batch needs leaves with one leading size, got {sorted(sizes)}.')
    return sizes.pop()

  def replicate(self, tree) -> Any:
    """Places a pytree (parameters, state, keys) on every device, whole."""
    if self.process_count == 1:
      return jax.device_put(tree, self.replicated)

    def put(x):
      if isinstance(x, jax.Array) and x.sharding == self.replicated:
        return x
      if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                        impl=jax.random.key_impl(x))
      host = np.asarray(jax.device_get(x))
      return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])
    return jax.tree_util.tree_map(put, tree)

  def to_host(self, tree) -> Any:
    """Global arrays → numpy, the whole array on every process (gathered if needed)."""
    def get(x):
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
          return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
      return np.asarray(jax.device_get(x))
    return jax.tree_util.tree_map(get, tree)

  # --- compiled functions
  @property
  def train_step_shardings(self) -> tuple[NamedSharding, NamedSharding, NamedSharding]:
    """Input shardings (state, batch, key) of a train step: state and key replicated, the
    batch ``[B, ...]`` sharded on ``'data'`` (``vae_qc.train.compile_train_step`` takes them),
    so the loss, metrics and batch-norm statistics are over the global batch."""
    return (self.replicated, self.batch_sharding, self.replicated)

  def jit_batched(self, fn: Callable) -> Callable:
    """``jax.jit(fn)`` for ``fn(replicated, batch [B, ...]) -> pytree of [B, ...]``: inputs
    and outputs sharded on ``'data'`` (the first argument replicated)."""
    return jax.jit(fn, in_shardings=(self.replicated, self.batch_sharding, self.batch_sharding),
                   out_shardings=self.batch_sharding)


def setup(config=None) -> Parallel:
  """Distributed start-up (if asked for) and the mesh of ``config.parallel``.

  ``config``: the run's ConfigDict (its ``parallel`` section is optional) or None. Processes
  other than 0 log warnings and errors only.
  """
  parallel_cfg = config.get('parallel') if config is not None else None
  s = _settings(parallel_cfg)
  initialize(parallel_cfg)
  devices = jax.devices()
  if s['num_devices'] > 0:
    if jax.process_count() > 1:
      raise ConfigError('config.parallel.num_devices only applies to a single process; set it '
                        'to 0 in multi-process runs.')
    if s['num_devices'] > len(devices):
      raise ConfigError(f"config.parallel.num_devices={s['num_devices']} but only "
                        f'{len(devices)} device(s) are visible.')
    devices = devices[:s['num_devices']]
  par = Parallel.create(devices)
  if not par.is_writer:
    logging.set_verbosity(logging.WARNING)
  logging.info('Data parallel over %s.', par.describe())
  return par
