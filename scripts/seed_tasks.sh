#!/usr/bin/env bash
# The seed papers' tasks at CPU size (README "Seed tasks: results"): each experiment is a list of
# `lotgrad train` runs, one run directory each under $RUNS. Resumable: a finished run (its
# result.txt) is skipped, an interrupted one continues from last.ckpt with --resume, so the
# script can be stopped and started again. At the end it prints one table per experiment.
#
#   scripts/seed_tasks.sh mqar|mqar64|mqar256|mqar-long|icl|lm|recurrent[-icl|-mqar|-mqar256|-mqar256-long|-lm|-listops]|all   [table: only print the tables]
#
# Environment: LOTGRAD (the program, default build/lotgrad), RUNS (default runs/seed),
# JOBS runs at a time (default 1) with THREADS threads each (default 2), MECHS (the MQAR
# mechanisms), DS (the MQAR model widths, default "64 128"), LM_MECHS (the LM's), STEPS_64 / STEPS_256 / ICL_STEPS / LM_STEPS (steps per run),
# LO_MECHS / LO_STEPS (ListOps 100-500).
# `recurrent`: the linear-recurrent family (DeltaNet, H3, ZeroS, Free Energy Mixer) beside
# softmax and linear attention: the heterogeneous in-context regression (one H3 layer against
# one linear-attention layer; -icl), MQAR at L = 64 with N_kv 8 and 16 (-mqar) and at L = 256
# with N_kv 64 (-mqar256), the character-level LM (-lm) and ListOps 100-500 (-listops).
set -euo pipefail
bin=${LOTGRAD:-build/lotgrad}
runs=${RUNS:-runs/seed}
jobs=${JOBS:-1}
threads=${THREADS:-2}
what=${1:-all}
table_only=${2:-}
export OMP_WAIT_POLICY=PASSIVE  # parallel runs share the cores: idle threads must not spin

# run NAME ARGS...: one training run into $runs/NAME (skipped when finished, resumed when cut).
run() {
  local name=$1; shift
  local dir=$runs/$name
  [ -f "$dir/result.txt" ] && return 0
  mkdir -p "$dir"
  local mode=(--overwrite)
  [ -f "$dir/last.ckpt" ] && mode=(--resume)
  if "$bin" train "$@" --threads "$threads" --out "$dir" "${mode[@]}" >"$dir/log.txt" 2>&1; then
    grep "best-on-dev checkpoint" "$dir/log.txt" >"$dir/result.txt"
  else
    echo "run $name failed: see $dir/log.txt" >&2
  fi
}
export -f run
export bin runs threads

# The jobs (one `run ...` line each) through xargs, $jobs at a time.
launch() { if [ -n "$table_only" ]; then cat >/dev/null; else tr '\n' '\0' | xargs -0 -P "$jobs" -I{} bash -c '{}'; fi; }

# The test figure of a finished run ("test acc 0.998" -> 0.998), or "-" while it is not.
figure() {
  local f=$runs/$1/result.txt
  [ -f "$f" ] && sed -E "s/.*test $2 ([0-9.e+-]+).*/\1/" "$f" || echo "-"
}

# ---- MQAR (Zoology): 2 attention-only causal layers, 1 head, learned positions, tied
# embeddings, V = 2L; the sliding window sees L/4 tokens. Batch 64 (L = 64) or 16 (L = 256).
mqar_jobs() {
  local L=$1 steps=$2
  for N in $3; do for d in ${DS:-64 128}; do for m in ${MECHS:-softmax linear performer window}; do
    local knob=""; [ "$m" = window ] && knob="--window $((L / 4))"
    echo "run mqar-L$L-N$N-d$d-$m --task mqar --vocab $((2 * L)) --seq-len $L --kv-pairs $N --train-size 20000" \
         "--val-size 500 --test-size 1000 --d-model $d --heads 1 --mlp 0 --depth 2 --dropout 0 --attention $m $knob" \
         "--steps $steps --batch $((L == 64 ? 64 : 16)) --lr 3e-3 --warmup 0.05 --eval-every $((steps >= 6 ? steps / 6 : 1))" \
         "--checkpoint-every $((steps >= 6 ? steps / 6 : 1))"
  done; done; done
}
mqar_table() {
  local L=$1
  printf "\nMQAR, L = %s, V = %s: test accuracy over queried positions\n" "$L" $((2 * L))
  printf "%-8s %-6s" "N_kv" "d"; for m in ${MECHS:-softmax linear performer window}; do printf " %-10s" "$m"; done; echo
  for N in $2; do for d in ${DS:-64 128}; do
    printf "%-8s %-6s" "$N" "$d"
    for m in ${MECHS:-softmax linear performer window}; do printf " %-10s" "$(figure mqar-L$L-N$N-d$d-$m acc)"; done; echo
  done; done
}

# Longer schedules at L = 64, d 64 (the grid's settings otherwise): does the 2,000-step grid
# show a limit of the mechanism or of the budget?
mqar_long_jobs() {
  for spec in "linear 4 8000" "linear 8 8000" "linear 16 8000" "softmax 16 6000"; do
    set -- $spec
    echo "run long-$1-N$2 --task mqar --vocab 128 --seq-len 64 --kv-pairs $2 --train-size 20000 --val-size 500" \
         "--test-size 1000 --d-model 64 --heads 1 --mlp 0 --depth 2 --dropout 0 --attention $1 --steps $3 --batch 64" \
         "--lr 3e-3 --warmup 0.05 --eval-every 1000"
  done
}
mqar_long_table() {
  printf "\nMQAR, L = 64, d 64, longer schedules: test accuracy\n"
  for spec in "linear 4" "linear 8" "linear 16" "softmax 16"; do
    set -- $spec
    printf "%-8s N_kv %-4s %s\n" "$1" "$2" "$(figure long-$1-N$2 acc)"
  done
}

# ---- In-context linear regression, one plain linear-attention layer (Li, Rawat & Oymak):
# paired tokens, no positions, no LayerNorm, d = 8, n = 32; iid noiseless and heterogeneous.
# icl_run NAME DESIGN MECHANISM: the one-layer model with that mechanism (its icl-regression
# preset: plain linear attention; H3 with a free filter and no shift, as the study's model).
icl_run() {
  local steps=${4:-${ICL_STEPS:-6000}}
  echo "run $1 --task icl-regression --design $2 --layout paired --dim 8 --points 32 --val-size 2000" \
       "--test-size 20000 --attention $3 --depth 1 --heads 1 --d-model 16 --mlp 0 --norm 0 --pos none --init torch" \
       "--dropout 0 --steps $steps --batch 64 --lr 1e-2 --warmup 0.05 --eval-every $((steps / 10))"
}
icl_jobs() { for design in iid hetero; do icl_run "icl-$design" $design linear; done; }
icl_table() {
  printf "\nIn-context regression, d = 8, n = 32, one linear-attention layer: test risk E(ŷ - xᵀw)²\n"
  for design in iid hetero; do
    local f=$runs/icl-$design/result.txt
    printf "%-7s model %-10s  %s\n" "$design" "$(figure icl-$design mse)" \
      "$([ -f "$f" ] && sed -E 's/.*\((min-norm[^)]*)\).*/\1/' "$f")"
  done
}

# ---- Character-level LM on Debian's fortunes: 2 layers, d 128, context 256.
lm_jobs() {
  for m in ${LM_MECHS:-softmax window linear}; do
    local knob=""; [ "$m" = window ] && knob="--window 64"
    echo "run lm-$m --task lm --seq-len 256 --attention $m $knob --depth 2 --d-model 128 --heads 2 --mlp 512" \
         "--dropout 0.1 --steps ${LM_STEPS:-2000} --batch 16 --lr 2e-3 --warmup 0.05 --eval-every 500 --eval-batches 16"
  done
}
lm_table() {
  printf "\nCharacter-level LM (fortunes), context 256: test bits per character, tokens/s in training\n"
  for m in ${LM_MECHS:-softmax window linear}; do
    local f=$runs/lm-$m/result.txt
    printf "%-8s %-8s %s\n" "$m" "$(figure lm-$m bpc)" "$([ -f "$f" ] && sed -E 's/.* ([0-9.]+) tokens\/s.*/\1 tokens\/s/' "$f")"
  done
}

# ---- The linear-recurrent family (README "Linear-recurrent mechanisms").
rec_mechs="softmax linear deltanet h3 zeros fem"
# 20,000 steps: at 6,000 the H3 layer has learned its filter's weighting but not yet the
# preconditioner (test risk 7.3, above linear attention's 5.4).
rec_icl_jobs() { for m in linear h3; do icl_run rec-icl-$m hetero $m "${ICL_STEPS:-20000}"; done; }
# ListOps 100-500 (the LRA generator at medium length; README "LRA" trains softmax there with
# --init torch, without which it stays at the majority class), 2 layers, d 64, every mechanism
# of the family beside softmax and linear attention, LO_STEPS steps of 32.
rec_listops_jobs() {
  for m in ${LO_MECHS:-softmax linear deltanet h3 zeros fem fem_linear}; do
    echo "run lo500-$m --task listops --attention $m --init torch --min-len 100 --max-len 500 --train-size 48000" \
         "--val-size 1000 --test-size 2000 --bucket 20 --steps ${LO_STEPS:-1500} --eval-every 250 --checkpoint-every 250"
  done
}
rec_listops_table() {
  printf "\nListOps, lengths 100-500, %s steps: test accuracy\n" "${LO_STEPS:-1500}"
  for m in ${LO_MECHS:-softmax linear deltanet h3 zeros fem fem_linear}; do printf "%-10s %s\n" "$m" "$(figure lo500-$m acc)"; done
}
rec_icl_table() {
  printf "\nIn-context regression, heterogeneous noise, d = 8, n = 32, one layer: test risk\n"
  printf "linear %s   h3 %s   (optimal one-step GD 5.19, optimal weighted one-step GD 2.74)\n" \
    "$(figure rec-icl-linear mse)" "$(figure rec-icl-h3 mse)"
  if [ -z "$table_only" ] && [ -f "$runs/rec-icl-h3/best.ckpt" ]; then  # the learned filter against 1/(d+1+σ²)
    "$bin" eval --checkpoint "$runs/rec-icl-h3/best.ckpt" --threads "$threads" --plot "$runs/rec-icl-h3/filter.png" | tail -n +2
  fi
}

# ---- The softmax-side family (README "Structured and Taylor/injective attention"): BTT and MLR
# scores, QT-ViT and InLine.
# High-dimensional in-context regression (Kuang et al., arXiv 2509.07963): d 16, 32 points,
# x ~ N(0, I/16), no noise, Garg's interleaved layout; 4 causal layers of d 64, MLP 256, learned
# positions; the curriculum (dims 4 -> 16, points 8 -> 32) ends at 20% of the steps (Kuang et al.:
# 6% of 500,000). PyTorch's init and lr 3e-3: at N(0, 0.02²) or lr 1e-3 the 1,500-step probes
# stayed on the zero predictor's plateau (dev 0.97); lr 3e-3 left it (0.92 at step 1,200).
# ICL_CURRICULUM=N: one more dim every N steps instead (1000 with ICL_STEPS=20000: the curriculum
# ends at step 12,000), in run directories of their own (sicl-cN-...).
# struct_icl_run NAME MECHANISM HEADS
struct_icl_run() {
  local steps=${ICL_STEPS:-12000}
  echo "run $1 --task icl-regression --dim 16 --points 32 --x-std 0 --layout interleaved --attention $2 --heads $3" \
       "--depth 4 --d-model 64 --mlp 256 --dropout 0 --curriculum ${ICL_CURRICULUM:-$((steps * 20 / 100 / 12))} --dims-start 4" \
       "--points-start 8 --val-size 1000 --test-size 2000 --steps $steps --batch 64 --init torch --lr 3e-3 --warmup 0.05" \
       "--weight-decay 0 --eval-every $((steps / 10))"
}
struct_icl_specs="softmax-h8:softmax:8 softmax-h2:softmax:2 btt-h8:btt:8"
sicl=sicl${ICL_CURRICULUM:+-c$ICL_CURRICULUM}
struct_icl_jobs() { for s in ${STRUCT_ICL:-$struct_icl_specs}; do IFS=: read -r n m h <<<"$s"; struct_icl_run "$sicl-$n" "$m" "$h"; done; }
struct_icl_table() {
  printf "\nHigh-dimensional in-context regression, d 16, 32 points, 4 layers, d 64: test squared error\n"
  for s in ${STRUCT_ICL:-$struct_icl_specs}; do
    IFS=: read -r n m h <<<"$s"
    local f=$runs/$sicl-$n/result.txt
    printf "%-12s %-10s %s\n" "$n" "$(figure $sicl-$n mse)" "$([ -f "$f" ] && sed -E 's/.*\((min-norm[^)]*)\).*/\1/' "$f")"
    if [ -z "$table_only" ] && [ -f "$runs/$sicl-$n/best.ckpt" ] && [ ! -f "$runs/$sicl-$n/points.txt" ]; then
      "$bin" eval --checkpoint "$runs/$sicl-$n/best.ckpt" --threads "$threads" --plot "$runs/$sicl-$n/points.png" >"$runs/$sicl-$n/points.txt"
    fi
  done
}

# Fashion-MNIST (the LRA Image stand-in, Debian's dataset-fashion-mnist): the kernels that try to
# stay close to softmax (QT-ViT, InLine) beside softmax and linear attention, the image task's
# defaults, IMAGE_STEPS steps (default 600, evaluated every IMAGE_EVAL, default 300; a given
# IMAGE_STEPS has run directories of its own, image-sN-...).
img=image${IMAGE_STEPS:+-s$IMAGE_STEPS}
struct_image_jobs() {
  for m in ${IMAGE_MECHS:-softmax linear qtvit inline}; do
    echo "run $img-$m --task image --attention $m --steps ${IMAGE_STEPS:-600} --eval-every ${IMAGE_EVAL:-300} --eval-batches 16"
  done
}
struct_image_table() {
  printf "\nFashion-MNIST (32x32 pixel tokens), %s steps: test accuracy, ms/step\n" "${IMAGE_STEPS:-600}"
  for m in ${IMAGE_MECHS:-softmax linear qtvit inline}; do
    local f=$runs/$img-$m/result.txt
    printf "%-8s %-8s %s\n" "$m" "$(figure $img-$m acc)" "$([ -f "$f" ] && sed -E 's/.*; ([0-9.]+) ms\/step.*/\1 ms\/step/' "$f")"
  done
}

case "$what" in
  structured-image) struct_image_jobs | launch; struct_image_table ;;
  structured-icl) struct_icl_jobs | launch; struct_icl_table ;;
  recurrent-icl) rec_icl_jobs | launch; rec_icl_table ;;
  recurrent-mqar) MECHS=$rec_mechs mqar_jobs 64 "${STEPS_64:-2000}" "8 16" | launch; MECHS=$rec_mechs mqar_table 64 "8 16" ;;
  recurrent-mqar256) MECHS=$rec_mechs mqar_jobs 256 "${STEPS_256:-2500}" "64" | launch; MECHS=$rec_mechs mqar_table 256 "64" ;;
  recurrent-mqar256-long)  # the L = 256, N_kv = 64 runs with an 8,000-step schedule
    for m in ${MECHS:-deltanet softmax linear}; do
      echo "run long256-$m --task mqar --vocab 512 --seq-len 256 --kv-pairs 64 --train-size 20000 --val-size 500" \
           "--test-size 1000 --d-model 64 --heads 1 --mlp 0 --depth 2 --dropout 0 --attention $m --steps 8000" \
           "--batch 16 --lr 3e-3 --warmup 0.05 --eval-every 1000"
    done | launch
    printf "\nMQAR, L = 256, N_kv = 64, d 64, 8,000 steps: test accuracy\n"
    for m in ${MECHS:-deltanet softmax linear}; do printf "%-10s %s\n" "$m" "$(figure long256-$m acc)"; done ;;
  recurrent-lm) LM_MECHS=$rec_mechs lm_jobs | launch; LM_MECHS=$rec_mechs lm_table ;;
  recurrent-listops) rec_listops_jobs | launch; rec_listops_table ;;
  recurrent) for part in icl mqar mqar256 lm listops; do "$0" "recurrent-$part" $table_only; done ;;
  mqar64) mqar_jobs 64 "${STEPS_64:-2000}" "4 8 16" | launch; mqar_table 64 "4 8 16" ;;
  mqar256) mqar_jobs 256 "${STEPS_256:-2500}" "16 64" | launch; mqar_table 256 "16 64" ;;
  mqar) { mqar_jobs 256 "${STEPS_256:-2500}" "16 64"; mqar_jobs 64 "${STEPS_64:-2000}" "4 8 16"; } | launch
        mqar_table 64 "4 8 16"; mqar_table 256 "16 64" ;;
  mqar-long) mqar_long_jobs | launch; mqar_long_table ;;
  icl) icl_jobs | launch; icl_table ;;
  lm) lm_jobs | launch; lm_table ;;
  all) { icl_jobs; lm_jobs; mqar_jobs 64 "${STEPS_64:-2000}" "4 8 16"; mqar_jobs 256 "${STEPS_256:-2500}" "16 64"; } | launch
       icl_table; lm_table; mqar_table 64 "4 8 16"; mqar_table 256 "16 64" ;;
  *) echo "usage: scripts/seed_tasks.sh mqar|mqar64|mqar256|mqar-long|icl|lm|recurrent[-icl|-mqar|-mqar256|-mqar256-long|-lm]|all [table]" >&2; exit 2 ;;
esac
