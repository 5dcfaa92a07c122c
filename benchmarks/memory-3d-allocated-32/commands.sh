set -x
cd "$(git rev-parse --show-toplevel)"
PY="env OMP_NUM_THREADS=1 molrecon"
for n in 32 48; do
$PY bench memory --out benchmarks/memory-3d-allocated-$n --dims 3d --methods modl mol-lr mol-sn --modl-iters 10 --mol-iters 5 --shape-3d $n $n $n --coils-3d 8 --channels-3d 16 --penalty-backward after_data
done
