#!/usr/bin/env bash
# The command line when training goes wrong (issue 19). Usage: divergence_test.sh LOTGRAD_BINARY CASE
set -euo pipefail
bin=$1; case_name=$2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tiny="--task listops --min-len 3 --max-len 12 --train-size 400 --val-size 50 --test-size 50 --attention softmax --batch 16 --threads 1"
expect_error() {  # expect_error RC TEXT ARGS...: exit code RC (never a signal) and TEXT in "error: ..."
  local want=$1 text=$2; shift 2
  set +e; "$@" >"$work/out" 2>"$work/err"; local rc=$?; set -e
  [ "$rc" -eq "$want" ] || { echo "exit $rc (want $want): $*"; cat "$work/err"; exit 1; }
  grep -q -- "error: .*$text" "$work/err" || { echo "no '$text' in the error of: $*"; cat "$work/err"; exit 1; }
}
case "$case_name" in
  nan_grad)
    # A NaN gradient at step 6, an eval and checkpoint step: exit 1 naming the parameter; the checkpoints of step 3 stay.
    "$bin" train $tiny --steps 3 --eval-every 3 --out "$work/run" --quiet >/dev/null
    cp "$work/run/last.ckpt" "$work/last.before"; cp "$work/run/best.ckpt" "$work/best.before"
    LOTGRAD_FAULT_NAN_GRAD=6:head2.weight expect_error 1 "step 6 diverged: the loss is [0-9.]*; gradient of 'head2.weight' .* holds 1 nan of" \
      "$bin" train --out "$work/run" --resume --steps 12 --override --checkpoint-every 3
    grep -q "resume from $work/run/last.ckpt (step 3)" "$work/err"
    cmp "$work/run/last.ckpt" "$work/last.before"; cmp "$work/run/best.ckpt" "$work/best.before"
    LOTGRAD_FAULT_NAN_GRAD=x expect_error 2 "LOTGRAD_FAULT_NAN_GRAD=\"x\"" "$bin" train --out "$work/run" --resume
    # --detect-anomaly is a free option: --resume takes it without --override
    "$bin" train --out "$work/run" --resume --steps 12 --override --detect-anomaly --quiet >"$work/out"
    grep -q "best dev" "$work/out" ;;
  detect_anomaly)
    # Weights times 1 - lr * wd = -99 each step until the attention overflows: the op is named.
    blowup="$tiny --steps 30 --eval-every 30 --lr 10 --weight-decay 10 --warmup 0 --clip 0"
    expect_error 1 "diverged: .*--detect-anomaly names the op" "$bin" train $blowup --out "$work/a"
    # (the attention makes the first NaN in the forward; ReLU passes it on, so the loss is NaN)
    expect_error 1 "diverged: .*the first op to make a NaN from inputs without one: [A-Za-z]*Backward (inputs" \
      "$bin" train $blowup --out "$work/b" --detect-anomaly
    "$bin" train --help >"$work/help"  # not piped into grep -q: pipefail would see the SIGPIPE
    grep -q -- "--detect-anomaly" "$work/help" ;;
  loss_growth)
    # lr 10 (clipped): the loss leaves 2.3 for millions; one warning, and the summary says it.
    "$bin" train $tiny --steps 20 --eval-every 20 --log-every 5 --lr 10 --warmup 0 --out "$work/g" >"$work/out"
    [ "$(grep -c "^warning: the loss rose from" "$work/out")" -eq 1 ] || { echo "want one warning"; cat "$work/out"; exit 1; }
    tail -1 "$work/out" | grep -q "; warning: the loss rose from .*the last mean loss was"
    "$bin" train $tiny --steps 20 --eval-every 20 --log-every 5 --out "$work/n" >"$work/out"
    if grep -q "warning" "$work/out"; then echo "a normal run warned"; cat "$work/out"; exit 1; fi ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
echo "divergence $case_name: ok"
