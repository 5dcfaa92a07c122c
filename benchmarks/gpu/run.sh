#!/usr/bin/env bash
# The GPU checks and the GPU column of benchmarks/README.md in one run on a lent GPU machine (the `device` tool:
# its image has CUDA and PyTorch but reaches no package index).
#
# Here, once:   bash tools/gpu_wheels.sh          # the missing dependencies as wheels, into .gpu-wheels/
# On the GPU:   run(command="bash benchmarks/gpu/run.sh", carry=[".gpu-wheels"], timeout_s=540)
#               or some parts only:  bash benchmarks/gpu/run.sh tests speed
#
# Parts, in order (default: all): tests (tests/test_device.py: CUDA against the CPU), speed (ms per 2D slice of the
# shipped models), memory (2D step memory, 256² × 12 coils × 64 channels, MoDL K = 10/20 against MOL), train
# (2D training step of MoDL K = 10 and the shipped MOL recipes), fit (the 3D size at which MoDL K = 10 no longer
# fits on the card while MOL still trains). Each part has its own time limit, a failed part does not stop the run,
# and a part that the budget (BUDGET seconds, default 500) leaves no time for is skipped: run it in a second call,
# e.g. `bash benchmarks/gpu/run.sh fit`. What comes back, packed again after each part: $OUT/gpu-results.tar.gz
# (every part's JSON, markdown, plot and log) and $OUT/log.txt.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu-out}"
RES=/tmp/gpu-results
PY="${PYTHON:-python3}"
PARTS="${*:-tests speed memory train fit}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu runs the same commands here, a check of this script only
export MOLRECON_TEST_DEVICE="$DEVICE"
rm -rf "$RES" && mkdir -p "$RES" "$OUT"
export PYTHONPATH="$PWD/src" MOLRECON_DATA=/tmp/molrecon-data OMP_NUM_THREADS=4 MPLBACKEND=Agg

BUDGET="${BUDGET:-500}"  # seconds for the whole run: below the call's timeout_s, so that the results come back

log() { echo "[$(date +%T)] $*" | tee -a "$RES/log.txt"; }
pack() {  # after every part: what was measured comes back even if the call is cut short
  tar czf "$OUT/gpu-results.tar.gz" -C /tmp gpu-results
  cp "$RES/log.txt" "$OUT/log.txt"
}
part() {  # part NAME SECONDS COMMAND...: run within its limit and the budget left, output to NAME.txt
  local name=$1 limit=$2 left=$((BUDGET - SECONDS - 15)); shift 2
  if [ "$left" -lt 30 ]; then log "skip $name: the budget of ${BUDGET}s is spent"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "start $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$RES/$name.txt" 2>&1
  log "end $name: exit $?"
  pack
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$RES/log.txt" 2>&1
if ! "$PY" -c "import sigpy, nilearn, nibabel, ismrmrd, pydicom, torchkbnufft" 2>/dev/null; then
  if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
    part install 120 "$PY" -m pip install --no-index --no-deps .gpu-wheels/*.whl
  else
    log "no .gpu-wheels/ (bash tools/gpu_wheels.sh here, and carry it): molrecon's imports will fail"
  fi
fi
"$PY" -c "import torch, molrecon; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" >>"$RES/log.txt" 2>&1
part data 120 "$PY" -m molrecon data build --kind 2d

for p in $PARTS; do
  case $p in
    tests) part tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py ;;
    speed) part speed 180 "$PY" -m molrecon bench speed --device "$DEVICE" --examples 4 --repeats 5 --threads 4 \
             --out "$RES/speed" ;;
    memory)  # the CPU rows' commands (benchmarks/README.md, "Exact peak"): the shipped 2D recipes at 64 channels
      part memory-modl 120 "$PY" -m molrecon bench memory --device "$DEVICE" --dims 2d --methods modl \
        --modl-iters 10 20 --threads 4 --out "$RES/memory-modl"
      part memory-mol-sn 120 "$PY" -m molrecon bench memory --device "$DEVICE" --dims 2d --methods mol-sn \
        --mol-iters 5 50 --recipe mol-sn-2d-4x --threads 4 --out "$RES/memory-mol-sn"
      part memory-mol-lr 120 "$PY" -m molrecon bench memory --device "$DEVICE" --dims 2d --methods mol-lr \
        --mol-iters 5 50 --recipe mol-lr-2d-4x --threads 4 --out "$RES/memory-mol-lr" ;;
    train) part train 240 "$PY" -m molrecon bench train --device "$DEVICE" --dims 2d --steps 30 --val-every 15 \
             --limit-train 20 --limit-val 2 --threads 4 --methods modl-k10 mol-sn-orthogonal mol-lr-orthogonal \
             --out "$RES/train" ;;
    fit) part fit-modl-mol-lr 240 "$PY" -m molrecon bench fit --device "$DEVICE" --methods modl mol-lr \
           --recipe mol-lr-2d-4x --threads 4 --out "$RES/fit-modl-mol-lr"
         part fit-mol-sn 150 "$PY" -m molrecon bench fit --device "$DEVICE" --methods mol-sn \
           --recipe mol-sn-3d-4x --threads 4 --out "$RES/fit-mol-sn" ;;
    *) log "unknown part $p (tests speed memory train fit)" ;;
  esac
done
pack
