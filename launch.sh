#!/usr/bin/env bash
# vae-qc launcher. Installs what is needed into .venv (created with python3 if missing), then:
#   ./launch.sh mnist [--config.x=y ...]   the MNIST study on the default data (runs/mnist)
#   ./launch.sh print [--config.x=y ...]   the print-surface study (runs/print)
#   ./launch.sh test  [pytest args]        the whole test suite
# Environment: VENV (default .venv), WORKDIR (default runs/<study>), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

install() {  # $1: pip extras spec, e.g. "." or ".[test]"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.vae_qc_installed" want
  want="$1 $(cat setup.cfg pyproject.toml | cksum)"
  if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$1"
    echo "$want" >> "$stamp"
  fi
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  mnist)
    install "."
    exec "$VENV/bin/python" experiments/mnist_anomaly.py --config=experiments/configs/mnist.py \
      --workdir="${WORKDIR:-runs/mnist}" "$@"
    ;;
  print)
    install "."
    exec "$VENV/bin/python" experiments/print_anomaly.py --config=experiments/configs/print.py \
      --workdir="${WORKDIR:-runs/print}" "$@"
    ;;
  test)
    install ".[test]"
    exec "$VENV/bin/python" -m pytest -n 2 -q "$@"
    ;;
  *)
    sed -n '2,7p' "$0"
    [ "$cmd" = help ] || exit 2
    ;;
esac
