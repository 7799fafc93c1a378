#!/usr/bin/env bash
# The kit's two entry points on a fresh machine with only Python 3.10+:
#   bash run.sh reproduce [--profile cpu|smoke|gpu]   set up .venv, run every notebook, write figures/
#   bash run.sh test                                  set up .venv, run the test suite
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.unlearnkit-ready ]; then
  echo "setting up .venv (torch, diffusers, ... and unlearnkit) ..."
  rm -rf .venv
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # these torch/torchvision versions install from the local wheel cache on the kit's CI machines
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[dev]"
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
  touch .venv/.unlearnkit-ready
fi
cmd=${1:-test}
shift || true
case "$cmd" in
  # the notebooks run under nbmake on the smoke profile (seconds each)
  test) UNLEARNKIT_PROFILE=smoke exec .venv/bin/python -m pytest -q tests --nbmake notebooks "$@" ;;
  reproduce) exec .venv/bin/unlearnkit reproduce "$@" ;;
  *) echo "usage: bash run.sh test|reproduce [options]" >&2; exit 2 ;;
esac
