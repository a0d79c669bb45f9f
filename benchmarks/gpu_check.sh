#!/usr/bin/env bash
# The GPU checks in one short run, for a lent GPU machine (about 15 minutes of device time in all):
# the CUDA tests (the NRI baseline on CUDA among them), then the round benchmark and its sweep on CUDA. Logs and JSON go to
# ${OUT:-benchmarks/results}. Needs torch with CUDA, numpy, pyarrow, pyyaml, tqdm and pytest (not ray).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c 'import torch; print("torch", torch.__version__, "device", torch.cuda.get_device_name())' | tee "$out/gpu_machine.log"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_engine.py tests/test_nri.py -k "cuda or engine or gpu" 2>&1 | tee "$out/gpu_tests.log"
python3 benchmarks/round.py --device cuda --sweep --json "$out/round_cuda.json" 2>&1 | tee "$out/round_cuda.log"
