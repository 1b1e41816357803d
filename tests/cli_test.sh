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
    grep -q -- "--stepz" "$work/err"
    "$bin" --version | grep -q "^lotgrad [0-9]"
    # every command and every benchmark answers --help with its options
    for c in demo lra train eval inspect plot report info probe maps "bench matmul" "bench ops" "bench attention" \
             "bench attention-kernel" "bench step" "bench sinkhorn"; do
      $bin $c --help >"$work/h" || { echo "$c --help failed"; exit 1; }
      grep -q -- "--" "$work/h" || { echo "$c --help lists no options"; exit 1; }
    done ;;
  bad_values)
    # refused before any work, naming the option, with exit code 2 (never a signal)
    expect_refusal() {  # expect_refusal TEXT ARGS...: exit 2 and TEXT in the message
      local text=$1; shift
      set +e; "$@" >"$work/out" 2>"$work/err"; local rc=$?; set -e
      [ "$rc" -eq 2 ] || { echo "exit $rc (want 2): $*"; cat "$work/err"; exit 1; }
      grep -q -- "$text" "$work/err" || { echo "no '$text' in the message of: $*"; cat "$work/err"; exit 1; }
    }
    expect_refusal "--lr" "$bin" train --steps 3 --lr
    expect_refusal "--eval-every" "$bin" train --eval-every 0
    expect_refusal "--mlp" "$bin" train --mlp 0
    expect_refusal "--depth" "$bin" train --depth -1
    expect_refusal "--d-model" "$bin" train --d-model 0
    expect_refusal "--clip" "$bin" train --clip -1
    expect_refusal "--threads" "$bin" train --threads 100000
    expect_refusal "--tau" "$bin" train --attention softmax --tau 0.5
    expect_refusal "--r" "$bin" train --attention lotformer --r 0
    expect_refusal "doubly-stochastic matrix is the identity" "$bin" train --attention lotformer --causal
    expect_refusal "LOTGRAD_NUM_THREADS" env LOTGRAD_NUM_THREADS=abc "$bin" info
    expect_refusal "--count" "$bin" inspect --checkpoint x.ckpt --count -3
    expect_refusal "--runs" "$bin" bench sinkhorn --runs -1 ;;
  run_settings)
    tiny="--task listops --min-len 3 --max-len 12 --train-size 500 --val-size 100 --test-size 100 --threads 2"
    "$bin" train $tiny --attention softmax --steps 6 --batch 16 --eval-every 3 --out "$work/run" >"$work/out"
    python3 -m json.tool "$work/run/config.json" >/dev/null
    # eval needs only the checkpoint; a contradicting option names both values
    "$bin" eval --checkpoint "$work/run/best.ckpt" | grep -q "test acc of"
    "$bin" inspect --checkpoint "$work/run/best.ckpt" --count 3 | grep -q "entropy/log n"
    if "$bin" eval --checkpoint "$work/run/best.ckpt" --seed 7 2>"$work/err"; then echo "--seed 7 accepted"; exit 1; fi
    grep -q -- "--seed 7 contradicts .*seed is 1" "$work/err"
    # a second run into the same directory is refused; --resume with nothing to resume says so
    if "$bin" train $tiny --steps 6 --out "$work/run" 2>"$work/err"; then echo "overwrote a run"; exit 1; fi
    grep -q "already holds" "$work/err"
    if "$bin" train --out "$work/empty" --resume 2>"$work/err"; then echo "resumed nothing"; exit 1; fi
    grep -q "nothing to resume" "$work/err"
    # --resume takes the stored settings: a longer run needs --override
    if "$bin" train --out "$work/run" --resume --steps 8 2>"$work/err"; then echo "changed steps"; exit 1; fi
    grep -q -- "--override" "$work/err"
    "$bin" train --out "$work/run" --resume --steps 8 --override --quiet | grep -q "ms/step" ;;
  interrupt)
    # Ctrl-C during training: last.ckpt written atomically, the resume command printed
    "$bin" train --task listops --min-len 3 --max-len 12 --train-size 500 --val-size 100 --test-size 100 \
      --attention softmax --steps 100000 --batch 16 --eval-every 100000 --checkpoint-every 100000 --log-every 1 \
      --threads 2 --out "$work/run" >"$work/out" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q "step" "$work/out" 2>/dev/null && grep -q "loss" "$work/out" && break; sleep 0.1; done
    kill -INT "$pid"
    set +e; wait "$pid"; rc=$?; set -e
    [ "$rc" -eq 130 ] || { echo "exit $rc after SIGINT (want 130)"; tail -3 "$work/out"; exit 1; }
    grep -q "resume with: lotgrad train --out $work/run --resume" "$work/out"
    test -s "$work/run/last.ckpt"
    if ls "$work/run" | grep -q tmp; then echo "temporary file left"; exit 1; fi
    "$bin" eval --checkpoint "$work/run/last.ckpt" --split val | grep -q "val acc of"
    # Ctrl-C during start-up (the data, here 400,000 examples) stops the run before its first step:
    # a background job inherits SIGINT ignored, so a handler set up late lost it and the run went on
    "$bin" train --task listops --min-len 3 --max-len 12 --train-size 400000 --val-size 100 --test-size 100 \
      --attention softmax --steps 100000 --batch 16 --threads 1 --out "$work/run4" >"$work/out4" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do [ -s "$work/run4/lock" ] && break; sleep 0.01; done
    kill -INT "$pid"
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true  # still running after 60 s: the SIGINT was lost
    set +e; wait "$pid"; rc=$?; set -e
    [ "$rc" -eq 130 ] || { echo "exit $rc after a SIGINT in start-up (want 130)"; tail -3 "$work/out4"; exit 1; }
    grep -q "interrupted at step 0: $work/run4/last.ckpt written" "$work/out4" || { cat "$work/out4"; exit 1; }
    # a second Ctrl-C exits at once: here both arrive during a long dev evaluation (120,000 examples, seconds)
    "$bin" train --task listops --min-len 3 --max-len 12 --train-size 500 --val-size 120000 --test-size 100 \
      --attention softmax --steps 5 --batch 16 --eval-every 1 --log-every 1 --threads 2 --out "$work/run2" >"$work/out2" 2>&1 &
    pid=$!
    for _ in $(seq 1 1200); do grep -q "loss" "$work/out2" 2>/dev/null && break; sleep 0.1; done
    sleep 0.2; kill -INT "$pid"; sleep 0.3; kill -INT "$pid"
    set +e; wait "$pid"; rc=$?; set -e
    [ "$rc" -eq 130 ] || { echo "exit $rc after two SIGINTs (want 130)"; exit 1; }
    if grep -q "eval step 1\|resume with" "$work/out2"; then echo "the second SIGINT did not exit at once"; exit 1; fi
    # lotgrad lra stops the whole job on SIGTERM: the second mechanism is never started
    "$bin" lra --attention softmax,linear --steps 100000 --train-size 500 --threads 2 --out "$work/lra" >"$work/out3" 2>&1 &
    pid=$!
    # (its step lines come every few thousand steps: wait for the model line, then let training start)
    for _ in $(seq 1 600); do grep -q "^model: " "$work/out3" 2>/dev/null && break; sleep 0.1; done
    sleep 1
    kill -TERM "$pid"
    set +e; wait "$pid"; rc=$?; set -e
    [ "$rc" -eq 130 ] || { echo "lra: exit $rc after SIGTERM (want 130)"; tail -3 "$work/out3"; exit 1; }
    grep -q "stopped by a signal during softmax" "$work/out3"
    if grep -q "=== linear" "$work/out3"; then echo "lra went on to the next mechanism after SIGTERM"; exit 1; fi ;;
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
    grep -q '"tokens_per_s"' "$work/s.json"
    # a block-input mechanism (its own projections) causal, and the delta_rule op against its recurrence
    "$bin" bench attention --attention deltanet --causal --n 96 --runs 1 --warmup 0 --json >"$work/d.json"
    grep -q '"verified":true' "$work/d.json"; grep -q 'deltanet causal n=96' "$work/d.json"
    "$bin" bench delta-rule --quick --batch 1 --heads 2 --runs 1 --warmup 0 --json >"$work/r.json"
    grep -q '"verified":true' "$work/r.json"; if grep -q '"verified":false' "$work/r.json"; then exit 1; fi ;;
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
    grep -q "test acc of" "$work/e"
    # An option that contradicts the checkpoint's stored settings: the error names both values.
    if "$bin" eval --task listops --min-len 3 --max-len 12 --train-size 500 --val-size 100 --test-size 100 \
      --attention softmax --pooling cls --checkpoint "$work/run/best.ckpt" 2>"$work/err"; then exit 1; fi
    grep -q -- "--pooling cls contradicts .*best.ckpt, whose pooling is mean" "$work/err"
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
    grep -q -- "--init" "$work/err" ;;
  report)
    # two tiny runs, overlaid by plot and compared by report (the page itself: test_report, report_browser_test.sh)
    tiny="--task listops --min-len 3 --max-len 12 --train-size 64 --val-size 16 --test-size 16 --d-model 16 --mlp 16"
    "$bin" train $tiny --attention softmax --steps 4 --batch 8 --eval-every 2 --threads 2 --out "$work/soft" --quiet
    "$bin" train $tiny --attention lotformer --steps 6 --batch 8 --eval-every 2 --threads 2 --out "$work/lot" --quiet
    "$bin" plot "$work/soft" "$work/lot/metrics.jsonl" --lr --out "$work/c.png" | tee "$work/o"
    grep -q "2 runs, 5 dev evaluations, with the learning rate" "$work/o"; test -s "$work/c.png"
    "$bin" report "$work/soft" "$work/lot" --out "$work/r.html" --examples 1 --scale log --compare softmax,lotformer-r2 \
      --compare-n 12 --threads 2 | tee "$work/o"
    grep -q "wrote $work/r.html (2 runs" "$work/o"
    test "$(grep -o '<figure class="map">' "$work/r.html" | wc -l)" -eq $((2 * 1 * 2 * 2 + 2 * 2))
    test "$(grep -o '<figure class="chart">' "$work/r.html" | wc -l)" -eq 4
    grep -q "test at best dev" "$work/r.html"
    "$bin" report "$work/lot" --out "$work/r2.html" --example-ids 3,7 --compare none --threads 2 >/dev/null
    grep -q "val example 7 " "$work/r2.html"
    if grep -q 'id="mechanisms"' "$work/r2.html"; then echo "--compare none drew the comparison"; exit 1; fi
    "$bin" maps --out-dir "$work/maps" --n 16 --mechanisms softmax,lotformer-r2 --scale log >"$work/o"
    test -s "$work/maps/maps_grid.png"; test -s "$work/maps/maps_lotformer-r2_h1.png"; grep -q "colour scale log" "$work/o"
    # refused, naming the option or the directory
    if "$bin" report "$work/nope" 2>"$work/err"; then echo "a missing run directory accepted"; exit 1; fi
    grep -q "nope" "$work/err"
    if "$bin" report "$work/soft" --scale cubic 2>"$work/err"; then echo "--scale cubic accepted"; exit 1; fi
    grep -q -- "--scale" "$work/err"
    if "$bin" report "$work/soft" --compare softmax,lotformer-rx 2>"$work/err"; then echo "a bad mechanism accepted"; exit 1; fi
    grep -q -- "--mechanisms lotformer-rx" "$work/err"
    mkdir "$work/empty"
    if "$bin" report "$work/empty" 2>"$work/err"; then echo "an empty directory accepted"; exit 1; fi
    grep -q "holds no config.json" "$work/err" ;;
  seq_tasks)
    # mqar: generated and written, read back, eval; icl-regression with its references; lm on a text file
    mq="--task mqar --vocab 64 --seq-len 32 --kv-pairs 4 --train-size 64 --val-size 16 --test-size 16 --d-model 16 --mlp 0"
    "$bin" train $mq --attention linear --steps 4 --batch 8 --eval-every 2 --threads 2 --write-data "$work/mqd" \
      --out "$work/mq" | tee "$work/out"
    grep -q "dev acc" "$work/out"; test -s "$work/mqd/mqar_train.txt"
    "$bin" train $mq --attention linear --steps 4 --batch 8 --eval-every 2 --threads 2 --data "$work/mqd" \
      --out "$work/mq2" >/dev/null
    "$bin" eval --checkpoint "$work/mq/best.ckpt" --threads 2 >"$work/o"; grep -q "test acc of" "$work/o"
    "$bin" train --task icl-regression --layout paired --dim 4 --points 8 --val-size 16 --test-size 16 --pos none \
      --norm 0 --mlp 0 --depth 1 --attention linear --steps 4 --batch 8 --eval-every 2 --threads 2 --out "$work/icl" \
      >"$work/o"
    grep -q "optimal one-step GD" "$work/o"
    "$bin" eval --checkpoint "$work/icl/best.ckpt" --threads 2 >"$work/o"; grep -q "test mse of" "$work/o"
    # one H3 layer (free filter): eval lists its weight per in-context point beside the optimal ones
    "$bin" train --task icl-regression --layout paired --design hetero --dim 4 --points 8 --val-size 16 --test-size 16 \
      --pos none --norm 0 --mlp 0 --depth 1 --heads 1 --d-model 8 --attention h3 --steps 4 --batch 8 --eval-every 2 \
      --threads 2 --out "$work/iclh3" --quiet
    "$bin" eval --checkpoint "$work/iclh3/best.ckpt" --threads 2 --plot "$work/h3.png" >"$work/o"
    grep -q "filter head 0   optimal 1/(d+1+sigma^2)" "$work/o"; test -s "$work/h3.png"
    [ "$(grep -cE '^ +[0-9]+ +[0-9.-]+ +[0-9.]+$' "$work/o")" -eq 8 ]  # a row per point
    "$bin" train --task icl-regression --dim 4 --points 6 --val-size 16 --test-size 16 --depth 1 --d-model 16 --steps 2 \
      --batch 8 --eval-every 2 --threads 2 --out "$work/icl2" --quiet
    "$bin" eval --checkpoint "$work/icl2/best.ckpt" --threads 2 --plot "$work/icl2.png" >"$work/o"
    grep -q "examples before" "$work/o"; grep -q "wrote .*: squared error, least squares" "$work/o"; test -s "$work/icl2.png"
    for i in $(seq 200); do echo "the quick brown fox $i jumps over the lazy dog"; done >"$work/text.txt"
    "$bin" train --task lm --data "$work/text.txt" --seq-len 16 --attention linear --d-model 16 --steps 4 --batch 8 \
      --eval-every 2 --threads 2 --out "$work/lm" >"$work/o"
    grep -q "dev bpc" "$work/o"
    "$bin" plot "$work/lm/metrics.jsonl" --out "$work/lm.png"; test -s "$work/lm.png"
    # bad input: refused before any work (exit 2) or by the reader, naming the option or the file
    expect_refusal() {
      local text=$1; shift
      set +e; "$@" >"$work/o" 2>"$work/err"; local rc=$?; set -e
      [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] || { echo "exit $rc: $*"; cat "$work/err"; exit 1; }
      grep -q -- "$text" "$work/err" || { echo "no '$text' in the message of: $*"; cat "$work/err"; exit 1; }
    }
    expect_refusal "no breakdown to plot" "$bin" eval --checkpoint "$work/icl/best.ckpt" --threads 2 --plot "$work/x.png"
    expect_refusal "--vocab 32 and --seq-len 64" "$bin" train --task mqar --vocab 32 --seq-len 64
    expect_refusal "--kv-pairs 20 and --seq-len 64" "$bin" train --task mqar --kv-pairs 20 --seq-len 64
    expect_refusal "--dim" "$bin" train --task icl-regression --dim 0
    expect_refusal "no causal form" "$bin" train --task lm --attention lotformer
    : >"$work/empty.txt"
    expect_refusal "empty.txt" "$bin" train --task lm --data "$work/empty.txt" --out "$work/x1"
    printf 'ab\0cd' >"$work/bin.txt"
    expect_refusal "bin.txt" "$bin" train --task lm --data "$work/bin.txt" --out "$work/x2"
    echo "short" >"$work/short.txt"
    expect_refusal "short" "$bin" train --task lm --data "$work/short.txt" --out "$work/x3" ;;
  *) echo "unknown case $case_name"; exit 2 ;;
esac
echo "cli $case_name: ok"
