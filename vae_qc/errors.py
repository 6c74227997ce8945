"""The one exception family users see.

Every failure caused by user input (config, data, paths, estimator arguments) raises a
subclass of :class:`VaeQcError` whose message says what was wrong, where, and what to do.
Anything else escaping the package is a bug.
"""


class VaeQcError(ValueError):
  """Base class of all user-facing errors of vae_qc."""


class ConfigError(VaeQcError):
  """A configuration field is unknown, of the wrong type or out of range."""


class DataError(VaeQcError):
  """A data source, folder or file is missing, unreadable or malformed."""


class EstimatorError(VaeQcError):
  """An estimator was called with invalid arguments (K <= 0, non-finite input, ...)."""


class TrainingError(VaeQcError):
  """Training cannot continue (non-finite loss, incompatible workdir, ...)."""


# The exit status of a run that stopped for a preemption signal after saving its state:
# EX_TEMPFAIL of sysexits.h ("try again later"). launch.sh, experiments/sweep.py and the
# SLURM array script read it as "preempted: re-run the same command to resume".
PREEMPTED_EXIT_STATUS = 75


class Preempted(Exception):
  """A preemption signal stopped the run at a safe point, its state saved (not an error).

  Not a :class:`VaeQcError`: the entry points turn it into exit status
  :data:`PREEMPTED_EXIT_STATUS`, not 2.
  """
