#!/usr/bin/env bash
# Wheels for a lent GPU machine that has torch but nothing of ours and cannot download (docs/gpu.md):
# basicsr 1.4.2 built from its sdist, addict, yapf (with platformdirs, which it imports), lmdb, and a wheel of
# this project, into wheelhouse/ (git-ignored). Prints each wheel and the total; fails above 48 MiB.
#   bash tools/build_wheelhouse.sh
#   # there:  python3 -m pip install --no-index --no-deps wheelhouse/*.whl && python3 tools/gpu_check.py --out $OUT/gpu
# Binary wheels (lmdb) are taken for that machine's Python, 3.12 on x86_64 Linux: WHEEL_PYTHON=3.11 changes it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${WHEELHOUSE:-wheelhouse}
PYTHON=${PYTHON:-.venv/bin/python}
TARGET_PYTHON=${WHEEL_PYTHON:-3.12}
LIMIT_MIB=48
PIP=("$PYTHON" -m pip --disable-pip-version-check)

rm -rf "$OUT"
mkdir -p "$OUT"
# Pure-Python wheels built here. basicsr's sdist names torch as a build requirement (only used for its
# optional CUDA extensions): building without isolation uses the torch installed here instead of fetching one.
"${PIP[@]}" wheel --quiet --no-deps --no-build-isolation --wheel-dir "$OUT" "basicsr==1.4.2" .
# The same versions tools/install.sh brings here; lmdb is compiled, so its wheel must match that machine.
"${PIP[@]}" download --quiet --no-deps --only-binary=:all: --dest "$OUT" \
    --python-version "$TARGET_PYTHON" --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "lmdb==3.0.0" "addict==2.4.0" "yapf==0.43.0" "platformdirs==4.14.9"

total=0
for wheel in "$OUT"/*.whl; do
    size=$(stat -c %s "$wheel")
    total=$((total + size))
    printf '%9.2f MiB  %s\n' "$(echo "$size / 1048576" | bc -l)" "$(basename "$wheel")"
done
printf '%9.2f MiB  total in %s (limit %d MiB)\n' "$(echo "$total / 1048576" | bc -l)" "$OUT" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "build_wheelhouse: $OUT is over $LIMIT_MIB MiB" >&2
    exit 1
fi
