#!/usr/bin/env bash
# Data-parallel training under mpirun (issue 20; docs/distributed.md).
# Usage: mpi_test.sh LOTGRAD_BINARY REDUCE_CHECK_BINARY CASE
# OpenMPI refuses to run as root unless told: the two variables are set here, for these
# processes only. --oversubscribe: 4 ranks on a 2-core machine.
set -euo pipefail
bin=$1; check=$2; case_name=$3
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
# Containers often forbid the cross-memory attach of the shared-memory transport.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# In the sanitizer job: OpenMPI's own allocations still held at exit (thousands, in components
# it dlopen'ed, so no suppression can name them) would each fail a run as a leak. Leak checks
# of lotgrad's data-parallel code are in tests/test_dist.cpp; here ASan's errors stay fatal.
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"
mpi() { local n=$1; shift; mpirun --oversubscribe -n "$n" "$@"; }
# A small ListOps run of 50 steps, global batch 10 (shards of 3, 2, 3, 2 on 4 ranks: uneven).
run_args() {  # run_args OUT EXTRA...
  local out=$1; shift
  echo "train --task listops --min-len 5 --max-len 30 --train-size 600 --val-size 60 --test-size 60 --d-model 32 --mlp 64
        --batch ${BATCH:-10} --steps ${STEPS:-50} --eval-every ${EVAL:-25} --checkpoint-every 10 --log-every 1 --dropout 0 --threads 1 --quiet
        --out $out $*"
}
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss": *\([^,}]*\).*/\1/'; }
# Largest relative difference of two runs' per-step losses; fails above $3.
agree() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
def losses(d):
    return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl") if '"loss"' in l]
a, b, tol = losses(sys.argv[1]), losses(sys.argv[2]), float(sys.argv[3])
assert len(a) == len(b) == 50, (len(a), len(b))
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"{sys.argv[2]}: largest relative loss difference from {sys.argv[1]} over 50 steps: {worst:.3g}")
sys.exit(0 if worst <= tol else 1)
PY
}
expect_error() {  # expect_error TEXT CMD...: a non-zero exit (never a signal) and TEXT in the output
  local text=$1; shift
  set +e; "$@" >"$work/out" 2>&1; local rc=$?; set -e
  # mpirun's own status is 128 + the signal when a rank was killed (the resume case kills one).
  [ "$rc" -ne 0 ] && { [ "$rc" -lt 128 ] || [ "${KILLED_OK:-0}" = 1 ]; } || { echo "exit $rc: $*"; cat "$work/out"; exit 1; }
  grep -q -- "$text" "$work/out" || { echo "no '$text' in the output of: $*"; cat "$work/out"; exit 1; }
}
case "$case_name" in
  reduce)  # the sums equal the sum of what the ranks put in; gradient buckets too
    for n in 1 2 4; do mpi $n "$check"; done ;;
  same_result)  # 2 and 4 ranks follow 1 rank within 1e-5; the same N twice gives the same bits
    for attention in softmax lotformer; do
      "$bin" $(run_args "$work/one-$attention" --attention $attention)
      for n in 2 4; do
        mpi $n "$bin" $(run_args "$work/n$n-$attention" --attention $attention)
        agree "$work/one-$attention" "$work/n$n-$attention" 1e-5
      done
    done
    mpi 2 "$bin" $(run_args "$work/again" --attention lotformer)
    cmp <(losses "$work/n2-lotformer") <(losses "$work/again")
    cmp "$work/n2-lotformer/best.ckpt" "$work/again/best.ckpt" ;;
  resume)  # rank 1 dies at step 23: every rank stops, the message names it, --resume on 2 or 4 ranks finishes the run
    mpi 2 "$bin" $(run_args "$work/whole" --attention softmax)
    LOTGRAD_FAULT_KILL_AT=step:23 LOTGRAD_FAULT_RANK=1 KILLED_OK=1 expect_error "process rank 1 .* exited on signal 9" \
      mpi 2 "$bin" $(run_args "$work/cut" --attention softmax)
    cp -r "$work/cut" "$work/cut4"
    mpi 2 "$bin" train --out "$work/cut" --resume --quiet >"$work/out"
    grep -q "best dev" "$work/out"
    cmp <(losses "$work/whole") <(losses "$work/cut")  # same N: the same bits as a run never stopped
    mpi 4 "$bin" train --out "$work/cut4" --resume --quiet >/dev/null
    agree "$work/whole" "$work/cut4" 1e-5 ;;
  nan_grad)  # a NaN in rank 1's own gradient at step 6: every rank stops, naming rank 1; checkpoints of step 5 stay
    mpi 2 "$bin" $(STEPS=5 EVAL=5 run_args "$work/run" --attention softmax)
    cp "$work/run/last.ckpt" "$work/last.before"
    LOTGRAD_FAULT_NAN_GRAD=6 LOTGRAD_FAULT_RANK=1 expect_error \
      "step 6 diverged: .*(data-parallel: rank 1 of 2 found it in its shard of the batch)" \
      mpi 2 "$bin" train --out "$work/run" --resume --override --steps 10
    [ "$(grep -c "error" "$work/out")" -eq 1 ] || { echo "want one error line (rank 0's)"; cat "$work/out"; exit 1; }
    cmp "$work/run/last.ckpt" "$work/last.before" ;;
  refusals)
    expect_error "--batch 3 cannot give each of 4 ranks an example" mpi 4 "$bin" $(BATCH=3 run_args "$work/r")
    expect_error "under mpirun only \`lotgrad train\`, \`lotgrad bench step\` and \`lotgrad bench allreduce\` run" mpi 2 "$bin" info ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
