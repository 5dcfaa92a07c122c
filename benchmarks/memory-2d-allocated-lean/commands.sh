set -x
cd "$(git rev-parse --show-toplevel)"
PY="env OMP_NUM_THREADS=1 molrecon"
$PY bench memory --out benchmarks/memory-2d-allocated-lean --dims 2d --methods modl mol-sn mol-lr --modl-iters 20 --mol-iters 5 50
$PY bench memory --out benchmarks/memory-2d-allocated-lean-sll --dims 2d --methods mol-sn --mol-iters 5 50 --set architecture=sll
$PY bench memory --out benchmarks/memory-2d-allocated-lean-after --dims 2d --methods mol-lr --mol-iters 5 50 --penalty-backward after_data
$PY bench memory --out benchmarks/memory-2d-allocated-lean-recipe --dims 2d --methods mol-lr --mol-iters 5 50 --penalty-backward after_data --set architecture=residual --set residual_scale=0.9 --set cg_iter=15 --set lr_weight=1e-5 --set lr_threshold=0.9 --set lr_clip=null --set lr_jacobian_steps=3 --set lr_jacobian_threshold=0.95
