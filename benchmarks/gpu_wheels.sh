#!/bin/sh
# Download, on a machine with a network, the wheels that gpu_peers.py needs on
# a GPU machine that has NumPy, SciPy, Numba, JAX with CUDA and PyTorch with
# CUDA but no PyTensor, into benchmarks/gpu-wheels/ (ignored by git):
#
#   sh benchmarks/gpu_wheels.sh [PYTHON_VERSION [PYTENSOR_VERSION]]
#
# PYTHON_VERSION is the GPU machine's (default 3.12), PYTENSOR_VERSION the
# PyTensor to measure (default 3.3.7); $PYTHON is the pip to use (default
# python3). Then, there:
#
#   python3 benchmarks/gpu_peers.py --wheels benchmarks/gpu-wheels
set -eu
py=${1:-3.12}
version=${2:-3.3.7}
dest=$(dirname "$0")/gpu-wheels
mkdir -p "$dest"
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version "$py" \
    --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" "pytensor==$version" cons etuples logical-unification minikanren
ls -l "$dest"
