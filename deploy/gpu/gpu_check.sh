#!/usr/bin/env bash
# `make gpu-check`: the GPU path end to end on a machine with an NVIDIA GPU, in a few minutes.
#
#   1. installs the gpu extra (TensorRT, and ModelOpt for TensorRT 11's FP16) into the venv;
#   2. builds the default model's version with an engine for this GPU and TensorRT
#      (`genwire model ensure`) and prints the engine's agreement with ONNX Runtime;
#   3. runs the GPU tests: engine build, a left-padded multi-row prefill and a long greedy
#      decode against ONNX Runtime, profile splitting, out-of-profile errors, GPU sampling,
#      plus the FP16-safe mask and fallback tests;
#   4. compares TensorRT with ONNX Runtime runner against runner (TTFT, decode tokens/s);
#   5. runs `genwire bench` on the stack with the engine, then with ONNX Runtime
#      (GENWIRE_MODEL_BACKEND=onnxruntime on a restarted Triton), and restores the engine.
#   6. builds a TensorRT INT8 version of the default checkpoint (ModelOpt Q/DQ graph, strongly
#      typed engine) in a scratch repository and compares its held-out loss, tokens/s and size
#      with the FP16 engine and ONNX Runtime FP32 (deploy/gpu/compare_quantized.py), then runs
#      the quantized GPU tests (FP8 too where the GPU has compute capability >= 8.9).
#
# Figures land in $GPU_CHECK_OUT (default: $GENWIRE_HOME/gpu-check). Exit status: 0 when every
# step passed, 2 without a GPU, else the first failing step's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GENWIRE_HOME="${GENWIRE_HOME:-$HOME/.cache/genwire}"
export GENWIRE_HOME
BIN="$GENWIRE_HOME/venv/bin"
OUT="${GPU_CHECK_OUT:-$GENWIRE_HOME/gpu-check}"
BENCH_N="${GPU_CHECK_REQUESTS:-40}"
mkdir -p "$OUT"
cd "$ROOT"

step() { printf '\n== gpu-check: %s\n' "$*"; }

# Fails unless Triton's newest default-model version says (runtime-status.json) it serves
# with $1: a bench of the wrong backend would print plausible figures for the wrong thing.
serving() {
  "$BIN/python" - "$1" <<'EOF'
import json
import sys

from genwire.settings import CommonSettings
from genwire_model.repository import ModelRepository

repo = ModelRepository(CommonSettings().repository)
version = repo.get("genwire-gpt", repo.versions("genwire-gpt")[-1])
status = json.loads((version.path / "runtime-status.json").read_text())
print(json.dumps(status, indent=2))
if status["backend"] != sys.argv[1]:
    raise SystemExit(f"gpu-check: Triton serves with {status['backend']}, not {sys.argv[1]}")
EOF
}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi -L failed); nothing to check" >&2
  exit 2
fi
nvidia-smi -L | tee "$OUT/gpu.txt"

step "installing the gpu extra"
GENWIRE_EXTRAS="${GENWIRE_EXTRAS:-all,dev,gpu}" deploy/native/bootstrap.sh
"$BIN/python" - <<'EOF' | tee "$OUT/tensorrt.txt"
from genwire_model.runtime.runners import tensorrt_usable
import tensorrt
reason = tensorrt_usable()
print(f"tensorrt {tensorrt.__version__}: {'usable' if reason is None else reason}")
raise SystemExit(0 if reason is None else 1)
EOF

step "building the default model's engine"
"$BIN/genwire" model ensure | tee "$OUT/ensure.txt"
"$BIN/python" - <<'EOF' | tee "$OUT/engine.json"
import json
from genwire.settings import CommonSettings
from genwire_model.repository import ModelRepository
from genwire_model.runtime.tensorrt_engine import RECORD, current_key, find_engine
repo = ModelRepository(CommonSettings().repository)
version = repo.get("genwire-gpt", repo.versions("genwire-gpt")[-1])
# The engine for this GPU and TensorRT, built with the version or later at a load (then the
# manifest says built: false, and the engine's own record carries the agreement figures).
plan = find_engine(version.path, current_key())
if plan is None:
    print(json.dumps(version.manifest["build"]["tensorrt"], indent=2))
    raise SystemExit("gpu-check: the default model has no engine for this GPU and TensorRT")
record = json.loads((plan.parent / RECORD).read_text())
print(json.dumps({k: v for k, v in record.items() if k != "profiles"}, indent=2))
EOF

step "GPU tests"
"$BIN/pytest" -q -p no:cacheprovider tests/model/test_tensorrt.py tests/model/test_export_mask.py \
  tests/model/test_sampling_torch.py \
  tests/model/test_tensorrt_fallback.py 2>&1 | tee "$OUT/pytest.txt"

step "TensorRT vs ONNX Runtime, runner against runner"
"$BIN/python" deploy/gpu/compare_backends.py --json "$OUT/compare.json" | tee "$OUT/compare.txt"

step "TensorRT INT8 engine vs the FP16 engine and FP32"
"$BIN/python" deploy/gpu/compare_quantized.py --mode int8 --json "$OUT/quantized-int8.json" \
  | tee "$OUT/quantized-int8.txt"
"$BIN/pytest" -q -p no:cacheprovider -rs tests/model/test_tensorrt_quant.py 2>&1 \
  | tee "$OUT/pytest-quantized.txt"

step "genwire bench with the engine"
"$BIN/genwire" up --no-demo
"$BIN/genwire" restart --only triton
serving tensorrt | tee "$OUT/status-tensorrt.json"
"$BIN/genwire" bench --targets triton-stream,grpc-stream -c 1,8 -n "$BENCH_N" \
  --json "$OUT/bench-tensorrt.json" | tee "$OUT/bench-tensorrt.txt"

step "genwire bench with ONNX Runtime"
# Whatever happens next, Triton ends up serving with the engine again.
trap '"$BIN/genwire" restart --only triton >/dev/null 2>&1 || true' EXIT
GENWIRE_MODEL_BACKEND=onnxruntime "$BIN/genwire" restart --only triton
serving onnxruntime | tee "$OUT/status-onnxruntime.json"
"$BIN/genwire" bench --targets triton-stream,grpc-stream -c 1,8 -n "$BENCH_N" \
  --json "$OUT/bench-onnxruntime.json" | tee "$OUT/bench-onnxruntime.txt"

step "done: figures in $OUT"
