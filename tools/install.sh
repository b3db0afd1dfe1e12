#!/usr/bin/env bash
# Set-up in one step: a virtual environment in .venv (or $UNIRAIN_VENV) with unirain installed editable.
#   UNIRAIN_EXTRAS  pip extras to install (default "cpu,test"; "gpu,test" brings faiss-gpu instead of faiss-cpu)
# Safe to re-run: what is already installed is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${UNIRAIN_VENV:-.venv}
EXTRAS=${UNIRAIN_EXTRAS:-cpu,test}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch and torchvision must come as a matching pair; this pair imports together on a plain x86_64 machine.
# An environment where they already import together (e.g. your own CUDA build) is left alone.
if ! "$VENV/bin/python" -c 'import torch, torchvision.ops' >/dev/null 2>&1; then
    "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
fi
# basicsr 1.4.2 is an sdist whose build requirements pull a second torch: build it against the one above.
if ! "$VENV/bin/python" -m pip show basicsr >/dev/null 2>&1; then
    "${PIP[@]}" setuptools wheel
    "${PIP[@]}" --no-build-isolation "basicsr==1.4.2"
fi
"${PIP[@]}" --no-build-isolation -e ".[${EXTRAS}]"
echo "unirain installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
