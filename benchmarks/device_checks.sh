#!/usr/bin/env bash
# The checks that need a GPU, in one run of about 8 minutes on one GPU (CI has none). Run
# from the repository root:
#
#     bash benchmarks/device_checks.sh            # logs under $OUT (or runs/device_checks)
#
# It needs python3 with torch, torchvision, einops, pyyaml, opencv, matplotlib, pytest and
# pytest-timeout (PyAV is not needed: the
# tests run without the suite's conftest, which writes videos). Nothing is installed: the
# package is imported from src/. Each step has its own time limit and the script goes on
# after a failure; the summary at the end says which steps failed.
#
#   1. the GPU tests: SyncBN under DDP (2 gloo processes sharing the GPU) against one process
#      with the global batch; the GPU plan's conditional execution against masked and the CPU
#      model (tests/test_ddp.py, tests/test_execution.py; skipped on machines without CUDA)
#   2. conditional vs masked inference at full size, 32 videos per call, fp32 and bf16
#      (benchmarks/conditional.py)
#   3. stage-3 training throughput at full size, batch 9 (the paper's 72 over 8 GPUs) and 32
#      (benchmarks/train_throughput.py): clips/s and peak memory
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/device_checks}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s): $*"
  if ! timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"; then
    failed+=("$name")
  fi
}

{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')"; } 2>&1 | tee "$out/machine.log"

step gpu_tests 180 python3 -m pytest -q --noconftest -p no:cacheprovider -rs \
  tests/test_ddp.py tests/test_execution.py -k "gpu or sync_bn"
step conditional_fp32 120 python3 benchmarks/conditional.py --config kinetics_sounds_rgb_audio \
  --device cuda --batch 32 --rounds 3
step conditional_bf16 90 python3 benchmarks/conditional.py --config kinetics_sounds_rgb_audio \
  --device cuda --batch 32 --rounds 3 --precision bf16
step train_batch9 60 python3 benchmarks/train_throughput.py --config kinetics_sounds_rgb_audio \
  --device cuda --steps 20 --warmup 3 --batch-size 9
step train_batch32 75 python3 benchmarks/train_throughput.py --config kinetics_sounds_rgb_audio \
  --device cuda --steps 20 --warmup 3 --batch-size 32

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]} (logs in $out)"
  exit 1
fi
echo "all steps passed (logs in $out)"
