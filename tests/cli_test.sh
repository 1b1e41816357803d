#!/usr/bin/env bash
# Smoke tests of the lotgrad program. Usage: cli_test.sh LOTGRAD_BINARY CASE
set -euo pipefail
bin=$1; case_name=$2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
case "$case_name" in
  help)
    "$bin" --help >"$work/h1"; grep -q "lotgrad train\|train " "$work/h1"
    "$bin" train --help >"$work/h2"; grep -q -- "--attention" "$work/h2"
    if "$bin" nonsense 2>/dev/null; then echo "unknown command accepted"; exit 1; fi
    if "$bin" train --stepz 3 2>"$work/err"; then echo "unknown option accepted"; exit 1; fi
    grep -q "unknown option --stepz" "$work/err" ;;
  demo)
    "$bin" demo --steps 60 --threads 2 | tee "$work/out" | tail -3
    grep -q "done in" "$work/out" ;;
  bench)
    "$bin" bench matmul --quick --runs 1 --warmup 0 --json >"$work/m.json"
    grep -q '"verified":true' "$work/m.json"
    if grep -q '"verified":false' "$work/m.json"; then exit 1; fi
    "$bin" bench attention --attention lotformer --n 128 --runs 1 --warmup 0 --json >"$work/a.json"
    grep -q '"verified":true' "$work/a.json"
    "$bin" bench step --attention linear --batch 2 --seq-len 64 --runs 1 --warmup 0 --json >"$work/s.json"
    grep -q '"tokens_per_s"' "$work/s.json" ;;
  probe)
    "$bin" probe --attention lotformer --n 32 --pad 4 --out "$work/a.npy" | tee "$work/out"
    test -s "$work/a.npy"
    grep -q "head 1" "$work/out" ;;
  train_plot)
    "$bin" train --task listops --min-len 3 --max-len 12 --train-size 500 --val-size 100 --test-size 100 \
      --attention softmax --steps 20 --batch 16 --eval-every 10 --out "$work/run" --threads 2 | tee "$work/out"
    grep -q "best-on-dev checkpoint" "$work/out"
    "$bin" eval --task listops --min-len 3 --max-len 12 --train-size 500 --val-size 100 --test-size 100 \
      --attention softmax --checkpoint "$work/run/best.ckpt" --threads 2 >"$work/e"
    grep -q "test accuracy" "$work/e"
    # A model built with other options than the checkpoint's: the error names the file and options.
    if "$bin" eval --task listops --min-len 3 --max-len 12 --train-size 500 --val-size 100 --test-size 100 \
      --attention softmax --pooling cls --checkpoint "$work/run/best.ckpt" 2>"$work/err"; then exit 1; fi
    grep -q "best.ckpt: .*--pooling" "$work/err"
    "$bin" plot "$work/run/metrics.jsonl" --out "$work/c.png"
    test -s "$work/c.png"
    echo "not json" >"$work/bad.jsonl"
    if "$bin" plot "$work/bad.jsonl" --out "$work/d.png" 2>"$work/err"; then exit 1; fi
    grep -q "bad.jsonl:1" "$work/err"
    # Model options that cannot apply name themselves.
    tiny="--task listops --min-len 3 --max-len 12 --train-size 50 --val-size 10 --test-size 10 --steps 1 --out $work/r2"
    if "$bin" train $tiny --pos 2d 2>"$work/err"; then echo "--pos 2d accepted for listops"; exit 1; fi
    grep -q "pos 2d needs square images" "$work/err"
    if "$bin" train $tiny --init xavier 2>"$work/err"; then echo "--init xavier accepted"; exit 1; fi
    grep -q "init must be" "$work/err" ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
echo "cli $case_name: ok"
