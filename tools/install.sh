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
# An environment where they already import together (e.g. your own CUDA build) is left alone, unless its torch
# is older than 2.6 (weights-only checkpoint loading): then nothing is changed and the script stops.
if "$VENV/bin/python" -c 'import torch, torchvision.ops' >/dev/null 2>&1; then
    TORCH=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
    if [[ ! $TORCH =~ ^([0-9]+)\.([0-9]+) ]] || (( BASH_REMATCH[1] * 100 + BASH_REMATCH[2] < 206 )); then
        echo "error: $VENV has torch $TORCH; unirain needs torch >= 2.6. Upgrade torch with a matching" \
             "torchvision in $VENV (or remove both: this script then installs torch 2.14.1 with torchvision" \
             "0.29.1), then run it again. Nothing was changed." >&2
        exit 1
    fi
else
    "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
fi
# basicsr 1.4.2 is an sdist whose build requirements pull a second torch: build it against the one above.
if ! "$VENV/bin/python" -m pip show basicsr >/dev/null 2>&1; then
    "${PIP[@]}" setuptools wheel
    "${PIP[@]}" --no-build-isolation "basicsr==1.4.2"
fi
"${PIP[@]}" --no-build-isolation -e ".[${EXTRAS}]"
echo "unirain installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
