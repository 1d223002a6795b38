#!/usr/bin/env bash
# Builds a wheel from a clean clone of this checkout's HEAD, installs it (with its
# dependencies, from the package registry) into a fresh virtual environment, and imports
# it there with its package data. Prints the wheel's name and what the import saw.
#   bash scripts/check_wheel.sh [PYTHON]
set -euo pipefail
python=${1:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
"$python" -m venv "$work/build-env"
"$work/build-env/bin/pip" install -q --upgrade pip build
"$work/build-env/bin/python" -m build -q --wheel --outdir "$work/dist" "$work/clone" 2>&1 | tee "$work/build.log"
if grep -qi deprecat "$work/build.log"; then echo "the build printed a deprecation warning" >&2; exit 1; fi
wheel=$(ls "$work"/dist/*.whl)
echo "built $(basename "$wheel")"
"$python" -m venv "$work/fresh"
"$work/fresh/bin/pip" install -q "$wheel"
cd "$work"
"$work/fresh/bin/python" - <<'PY'
import clockwork, clockwork.data as data, jax
from flax import nnx
print("imported", clockwork.__version__, "from", clockwork.__file__)
print("package data:", data.mnist_digits("test").shape, "videos", data.generate_moving_mnist(2, 4, 0).shape)
model = clockwork.CWVAE.from_config(clockwork.ModelConfig(levels=2, temporal_factor=2, filters=2,
    enc_dense_layers=1, cell_options={"stoch_size": 2, "det_size": 3, "hidden_size": 3}), rngs=nnx.Rngs(0))
loss, _ = model.loss(data.to_float(data.generate_moving_mnist(1, 4, 0)), jax.random.key(0))
print("loss finite:", bool(jax.numpy.isfinite(loss)))
PY
