#!/usr/bin/env bash
# vae-qc launcher. Installs what is needed into .venv (created with python3 if missing), then:
#   ./launch.sh mnist [--config.x=y ...]   the MNIST study, recommended recipe (runs/mnist);
#                                          the paper's: experiments/configs/mnist.py
#   ./launch.sh print [--config.x=y ...]   the print-surface study (runs/print)
#   ./launch.sh test  [pytest args]        the whole test suite
#   ./launch.sh lint                       ruff check (config in pyproject.toml)
#   ./launch.sh sweep [--slurm|--submit] [--digits 0-9] [--seeds 0,1] [--latents 2,32]
#       [--parallel P] [--out runs/sweep] [-- --config.x=y ...]
#                                          MNIST sweep here (P runs at a time), or print
#                                          (--slurm) / sbatch (--submit) a SLURM array;
#                                          finished runs are skipped; then the table
#   ./launch.sh aggregate [runs/sweep]     the sweep's table: summary.csv, summary.md
# Exit status: 2 a user error (one line on stderr); 75 preempted (SIGTERM/SIGUSR1): the state
#   is saved, re-run the same command to resume (SLURM: requeue). Studies run with exec, so
#   signals sent to this script reach Python directly.
# Environment: VENV (default .venv), WORKDIR (default runs/<study>), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

install() {  # $1: pip extras spec, e.g. "." or ".[test]"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.vae_qc_installed" sum
  sum="$(cat setup.cfg pyproject.toml | cksum)"
  # ".[test]" includes "."; either stamp satisfies a plain install.
  if [ ! -f "$stamp" ] || ! { grep -qxF "$1 $sum" "$stamp" || grep -qxF ".[test] $sum" "$stamp"; }; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$1"
    echo "$1 $sum" >> "$stamp"
    # Write the install out before a study starts: the kernel flushes its ~1 GB of new files
    # for a minute or more, and a study that times this machine (the print recipe's time
    # budget) would time it meanwhile and plan too short a run.
    sync
  fi
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  mnist)
    install "."
    exec "$VENV/bin/python" experiments/mnist_anomaly.py --config=experiments/configs/mnist_recipe.py \
      --workdir="${WORKDIR:-runs/mnist}" "$@"
    ;;
  print)
    install "."
    exec "$VENV/bin/python" experiments/print_anomaly.py --config=experiments/configs/print_cpu.py \
      --workdir="${WORKDIR:-runs/print}" "$@"
    ;;
  test)
    install ".[test]"
    exec "$VENV/bin/python" -m pytest -n 2 -q --durations=15 "$@"
    ;;
  lint)
    install ".[test]"
    exec "$VENV/bin/ruff" check .
    ;;
  sweep)  # --slurm / --submit (before --) turn the local sweep into a SLURM array
    install "."
    sub=run
    args=()
    after_dd=0
    for a in "$@"; do
      if [ "$after_dd" = 0 ] && [ "$a" = --slurm ]; then
        sub=slurm
      elif [ "$after_dd" = 0 ] && [ "$a" = --submit ]; then
        sub=slurm
        args+=(--submit)
      else
        [ "$a" = -- ] && after_dd=1
        args+=("$a")
      fi
    done
    exec "$VENV/bin/python" experiments/sweep.py "$sub" ${args[@]+"${args[@]}"}
    ;;
  aggregate)
    install "."
    exec "$VENV/bin/python" experiments/sweep.py aggregate "${1:-runs/sweep}"
    ;;
  *)
    sed -n '2,15p' "$0"
    [ "$cmd" = help ] || exit 2
    ;;
esac
