#!/usr/bin/env bash
# The GPU checks of txblocks on a CUDA machine that has torch but no network.
#
# Prepare, on a machine with network, from the project root (wheels for Python 3.12):
#   echo /.whl/ >> .git/info/exclude; mkdir -p .whl
#   P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
#   python3 -m pip download $P -d .whl xformers==0.0.35 pydantic pydantic-core==<the one pydantic pins> \
#       annotated-types typing-inspection typing-extensions jsonschema jsonschema-specifications \
#       referencing rpds-py
#   .venv/bin/python -m pip wheel --no-deps --no-build-isolation -w .whl . plugins/txblocks-*
# This copy travels with the project (benchmarks/gpu_check.sh); run it from the
# project root there:  bash benchmarks/gpu_check.sh   (logs go to $OUT or /tmp/gpu_out)
#
# FORCE_XFORMERS_PT=1 turns on xformers' PyTorch-backed operators when its own C++
# extension was built for another torch (xformers 0.0.35 is built for torch 2.10+cu128):
# the only way to run the xformers path under a newer torch. A matched install needs none.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site
if [ "${FORCE_XFORMERS_PT:-1}" = 1 ]; then
  printf '\n_built_with_cuda = True\n' >> /tmp/site/xformers/_cpp_lib.py
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m xformers.info 2>&1 | grep -iE "memory_efficient_attention\.|torch.version|build.cuda" | head -16
echo "== pytest -m cuda"
timeout ${PYTEST_S:-240} python3 -m pytest -q -m cuda -p no:cacheprovider -n 8 tests \
  > "$OUT/pytest_cuda.log" 2>&1; echo "pytest rc=$?"
tail -1 "$OUT/pytest_cuda.log"; grep -E "^FAILED" "$OUT/pytest_cuda.log" | head -30
echo "== benchmarks/speed.py --device cuda"
timeout ${SPEED_S:-240} python3 benchmarks/speed.py --device cuda > "$OUT/speed_cuda.log" 2>&1
echo "speed rc=$?"; grep -vE "Warning|warn" "$OUT/speed_cuda.log" | tail -25
echo "== benchmarks/generate.py --device cuda (issue 14: compiled decoding, CUDA graphs)"
timeout ${GENERATE_S:-360} python3 benchmarks/generate.py --device cuda --model llama-1b \
  --dtypes bf16 --batches 1 --compile --hf-static --repeats 3 > "$OUT/generate_cuda.log" 2>&1
echo "generate rc=$?"; grep -vE "Warning|warn" "$OUT/generate_cuda.log" | tail -6
