#!/usr/bin/env bash
# The device check of issue 22: tests/test_device_equivalence.py (every supported architecture as a tiny random model
# built in-process; hooks = weight edits, batched = one-by-one extraction, batched = one-at-a-time candidate and trial
# scoring) on CUDA in bf16, offline, no inputs beyond the repository. Usage:
#   benchmarks/gpu_check.sh LOG_FILE            # on a CUDA machine (fails in one line without CUDA)
#   DEVICE=cpu benchmarks/gpu_check.sh LOG_FILE # the same checks on the CPU (float32 unless DTYPE=bfloat16)
# PYTHON picks the interpreter (default: .venv/bin/python, else python3). vLLM = transformers is not checked: the
# project has no vLLM backend yet (docs/scale-out.md).
set -euo pipefail
LOG="${1:?usage: benchmarks/gpu_check.sh LOG_FILE}"
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
DEVICE="${DEVICE:-cuda}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error REFUSAL_LAB_TEST_DEVICE="$DEVICE"
[ -n "${DTYPE:-}" ] && export REFUSAL_LAB_TEST_DTYPE="$DTYPE"
mkdir -p "$(dirname "$LOG")"
exec > >(tee "$LOG") 2>&1
echo "gpu_check: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$PYTHON" - <<PY
import os, platform, torch
device = os.environ["REFUSAL_LAB_TEST_DEVICE"]
print(f"python {platform.python_version()}  torch {torch.__version__}  CUDA build {torch.version.cuda}  "
      f"CUDA available {torch.cuda.is_available()}")
if torch.device(device).type == "cuda":
    if not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: DEVICE={device} but torch sees no CUDA device; run on a CUDA machine or "
                         "set DEVICE=cpu")
    print(f"device {torch.cuda.get_device_name(device)}  capability {torch.cuda.get_device_capability(device)}")
else:
    print(f"device {device}  threads {torch.get_num_threads()}")
PY
start=$(date +%s)
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/test_device_equivalence.py || status=$?
echo "gpu_check: device=$DEVICE dtype=${DTYPE:-default} pytest exit $status in $(( $(date +%s) - start )) s; log $LOG"
exit "$status"
