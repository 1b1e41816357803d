#!/usr/bin/env bash
# Runs that survive faults: kill -9 at chosen moments (core/fault.h's LOTGRAD_FAULT_KILL_AT),
# a full disk during a checkpoint and during a metrics write (LOTGRAD_FAULT_ENOSPC, and a real
# file-size limit), two runs on one directory. Usage: fault_test.sh LOTGRAD_BINARY CASE
set -euo pipefail
bin=$1; case_name=$2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # as the doctest suites: no spinning on a shared machine
# A tiny ListOps run (about a second): dropout on, so the resumed dropout stream matters too;
# progress windows of 3 steps straddle the checkpoints every 4 steps.
tiny="--task listops --min-len 3 --max-len 12 --train-size 500 --val-size 100 --test-size 100 --attention softmax
      --batch 16 --steps 24 --eval-every 6 --checkpoint-every 4 --log-every 3 --threads 2"
run() {  # run DIR [ARGS...]: one lotgrad train into DIR; output in DIR.out, exit status in $rc
  local dir=$1; shift
  set +e; "$bin" train $tiny --out "$dir" "$@" >"$dir.out" 2>&1; rc=$?; set -e
}
fail() { echo "FAIL: $*"; exit 1; }
expect_rc() {  # expect_rc WANT WHAT: the last run's exit status
  [ "$rc" -eq "$1" ] || { cat "$last_out" 2>/dev/null; fail "$2: exit $rc, want $1"; }
}
# metrics.jsonl without the timing figure (the only field that differs between two runs)
untimed() { sed -E 's/"(ms_per_step|tokens_per_s)":[-0-9.e+]+,?//g' "$1"; }
# The run in $1 ended with the same bits as the uninterrupted run in $2.
same_run() {
  local x
  for x in last.ckpt prev.ckpt best.ckpt config.json; do
    cmp -s "$1/$x" "$2/$x" || fail "$x differs from the uninterrupted run's"
  done
  diff <(untimed "$1/metrics.jsonl") <(untimed "$2/metrics.jsonl") >"$work/d" ||
    { head -20 "$work/d"; fail "metrics.jsonl differs from the uninterrupted run's"; }
  # the summary: best dev, its step, test at best (the timing cut off)
  diff <(tail -1 "$1.out" | sed 's/, [0-9.]* ms\/step//') <(tail -1 "$2.out" | sed 's/, [0-9.]* ms\/step//') ||
    fail "the summary differs"
  if ls "$1" | grep -q "tmp"; then fail "temporary file left: $(ls "$1")"; fi
}
every_line_whole() {  # every line of a metrics log is a JSON object ending in a newline
  [ -z "$(tail -c 1 "$1")" ] || fail "$1 ends in a cut line"
  python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$1" || fail "$1 holds a cut line"
}

case "$case_name" in
  kill)
    # kill -9 at five moments of one run, each followed by --resume: before a step, in the
    # middle of a metrics line, in the middle of a checkpoint write, between the two renames
    # of a save (last.ckpt -> prev.ckpt, new -> last.ckpt), and before a step again.
    run "$work/ref"; rc_ref=$rc; [ "$rc_ref" -eq 0 ] || { cat "$work/ref.out"; fail "reference run: exit $rc_ref"; }
    f="$work/f"; last_out="$f.out"
    LOTGRAD_FAULT_KILL_AT=step:3 run "$f"; expect_rc 137 "kill before step 3"       # last.ckpt: step 0
    LOTGRAD_FAULT_KILL_AT=metrics:2 run "$f" --resume; expect_rc 137 "kill mid metrics line"  # step 6's line cut
    grep -q "resumed from $f/last.ckpt at step 0" "$f.out" || fail "not resumed from step 0"
    [ -n "$(tail -c 1 "$f/metrics.jsonl")" ] || fail "the kill did not cut a metrics line"
    LOTGRAD_FAULT_KILL_AT=checkpoint:1 run "$f" --resume; expect_rc 137 "kill mid checkpoint"  # step 6's best.ckpt
    grep -q "resumed from $f/last.ckpt at step 4" "$f.out" || fail "not resumed from step 4"
    ls "$f" | grep -q "ckpt.tmp" || fail "the kill left no half-written checkpoint"
    LOTGRAD_FAULT_KILL_AT=rotate:2 run "$f" --resume; expect_rc 137 "kill between renames"  # at step 12's save
    grep -q "removed $f/best.ckpt.tmp.[0-9]* (a save cut by a kill)" "$f.out" || fail "stale temporary file not removed"
    [ ! -e "$f/last.ckpt" ] && [ -e "$f/prev.ckpt" ] || fail "the kill did not fall between the renames"
    LOTGRAD_FAULT_KILL_AT=step:9 run "$f" --resume; expect_rc 137 "kill before step 17"
    grep -q "resumed from $f/prev.ckpt at step 8: $f/last.ckpt does not exist" "$f.out" ||
      { cat "$f.out"; fail "the fallback to prev.ckpt is not reported"; }
    run "$f" --resume; expect_rc 0 "the last resume"
    grep -q "resumed from $f/last.ckpt at step 16" "$f.out" || fail "not resumed from step 16"
    same_run "$f" "$work/ref"
    # a corrupt last.ckpt: --resume falls back to prev.ckpt, says why, sets the file aside
    printf 'garbage' | dd of="$f/last.ckpt" bs=1 seek=100 conv=notrunc 2>/dev/null
    run "$f" --resume; expect_rc 0 "resume over a corrupt last.ckpt"
    grep -q "resumed from $f/prev.ckpt at step 20: .*checksum mismatch.*kept as $f/last.ckpt.corrupt" "$f.out" ||
      { cat "$f.out"; fail "the corrupt last.ckpt is not reported"; }
    rm "$f/last.ckpt.corrupt"
    same_run "$f" "$work/ref" ;;
  enospc)
    # a full disk: a clear error naming the file, exit 1, the previous checkpoint intact and
    # resumable, no temporary file, no cut line; the resumed run ends as an uninterrupted one
    run "$work/ref"; [ "$rc" -eq 0 ] || fail "reference run: exit $rc"
    f="$work/c"; last_out="$f.out"
    LOTGRAD_FAULT_ENOSPC=checkpoint:3 run "$f"; expect_rc 1 "full disk during a checkpoint"  # step 6's best.ckpt
    grep -q "error: save_checkpoint: $f/best.ckpt: write failed: No space left on device" "$f.out" ||
      { cat "$f.out"; fail "the error does not name the file and the reason"; }
    if ls "$f" | grep -q tmp; then fail "temporary file left after ENOSPC"; fi
    every_line_whole "$f/metrics.jsonl"
    run "$f" --resume; expect_rc 0 "resume after a full disk"
    grep -q "resumed from $f/last.ckpt at step 4" "$f.out" || fail "not resumed from step 4"
    same_run "$f" "$work/ref"
    f="$work/m"; last_out="$f.out"
    LOTGRAD_FAULT_ENOSPC=metrics:4 run "$f"; expect_rc 1 "full disk during a metrics write"  # step 9's line
    grep -q "error: metrics log: $f/metrics.jsonl: write failed: No space left on device (the line of step 9" "$f.out" ||
      { cat "$f.out"; fail "the error does not name the file and the reason"; }
    every_line_whole "$f/metrics.jsonl"
    run "$f" --resume; expect_rc 0 "resume after a full disk"
    grep -q "resumed from $f/last.ckpt at step 8" "$f.out" || fail "not resumed from step 8"
    same_run "$f" "$work/ref" ;;
  file_limit)
    # a real write error (no injection): a file-size limit between the size of the step-0
    # checkpoint (no optimiser moments yet) and a later one; SIGXFSZ must not kill the run
    run "$work/ref"; [ "$rc" -eq 0 ] || fail "reference run: exit $rc"
    f="$work/u"; last_out="$f.out"
    (ulimit -f $(( $(stat -c %s "$work/ref/last.ckpt") / 1024 - 10 )); run "$f"; exit $rc) && rc=0 || rc=$?
    expect_rc 1 "a file-size limit"
    grep -q "error: save_checkpoint: $f/last.ckpt: write failed: File too large" "$f.out" || { cat "$f.out"; fail "EFBIG"; }
    if ls "$f" | grep -q tmp; then fail "temporary file left after EFBIG"; fi
    run "$f" --resume; expect_rc 0 "resume after EFBIG"
    grep -q "resumed from $f/last.ckpt at step 0" "$f.out" || fail "not resumed from step 0"
    same_run "$f" "$work/ref" ;;
  two_runs)
    # a second run on a directory in use is refused naming the holder; the first goes on
    slow="--task listops --min-len 3 --max-len 12 --train-size 500 --val-size 100 --test-size 100 --attention softmax
          --batch 16 --steps 100000 --eval-every 100000 --checkpoint-every 5 --log-every 1 --threads 1"
    d="$work/r"
    "$bin" train $slow --out "$d" >"$d.a" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q "loss" "$d.a" 2>/dev/null && break; sleep 0.05; done
    grep -q "loss" "$d.a" || fail "the first run did not start"
    for extra in "--overwrite" "--resume" "--resume --lr 0.001 --override"; do
      set +e; "$bin" train $slow --out "$d" $extra >"$d.b" 2>&1; rc=$?; set -e
      [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] || { cat "$d.b"; fail "second run ($extra): exit $rc"; }
      grep -q "error: train: $d is in use by another run (pid $pid on .*, started 20" "$d.b" ||
        { cat "$d.b"; fail "second run ($extra): holder not named"; }
    done
    kill -0 "$pid" || fail "the first run died"
    kill -INT "$pid"; set +e; wait "$pid"; rc=$?; set -e
    [ "$rc" -eq 130 ] || fail "the first run: exit $rc after SIGINT (want 130)"
    # its log: every step once, in order, nothing from the refused runs
    n=$(wc -l <"$d/metrics.jsonl")
    [ "$n" -ge 1 ] && diff <(grep -o '"step":[0-9]*' "$d/metrics.jsonl") <(seq 1 "$n" | sed 's/^/"step":/') >/dev/null ||
      fail "the first run's metrics.jsonl is not steps 1..$n"
    grep -q "interrupted at step $n: $d/last.ckpt written" "$d.a" || fail "the first run's last.ckpt"
    # a run killed with -9 leaves no stale lock: the next one takes the directory
    "$bin" train $slow --out "$d" --resume >"$d.c" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q "resumed" "$d.c" 2>/dev/null && break; sleep 0.05; done
    kill -9 "$pid"; wait "$pid" || true
    # (SIGINT once it has resumed, not after a fixed second: under load start-up can take longer)
    "$bin" train $slow --out "$d" --resume >"$d.d" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q "resumed\|error" "$d.d" 2>/dev/null && break; sleep 0.05; done
    kill -INT "$pid" 2>/dev/null || true
    set +e; wait "$pid"; rc=$?; set -e
    [ "$rc" -eq 130 ] || { cat "$d.d"; fail "after kill -9: exit $rc (want 130 after its SIGINT)"; }
    # (the kill may land between a save's renames: then the run before it resumes from prev.ckpt)
    grep -q "resumed from $d/\(last\|prev\).ckpt at step [0-9]" "$d.d" || { cat "$d.d"; fail "not resumed after kill -9"; } ;;
  bad_hook)
    # a malformed fault variable is an error naming it, not ignored
    set +e; LOTGRAD_FAULT_KILL_AT=checkpoint "$bin" train $tiny --out "$work/b" >"$work/b.out" 2>&1; rc=$?; set -e
    [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && grep -q "LOTGRAD_FAULT_KILL_AT=checkpoint: expected <event>:<n>" "$work/b.out" ||
      { cat "$work/b.out"; fail "malformed LOTGRAD_FAULT_KILL_AT: exit $rc"; }
    set +e; LOTGRAD_FAULT_ENOSPC=metrics:0 "$bin" train $tiny --out "$work/b2" >"$work/b.out" 2>&1; rc=$?; set -e
    [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && grep -q "LOTGRAD_FAULT_ENOSPC=metrics:0: the count" "$work/b.out" ||
      { cat "$work/b.out"; fail "malformed LOTGRAD_FAULT_ENOSPC: exit $rc"; } ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
echo "fault $case_name: ok"
