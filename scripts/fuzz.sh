#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ and runs each for SECONDS (default 30) on a copy of
# its seed corpus (fuzz/corpus/<target>/ is never modified).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: the fuzz_*.cpp names without fuzz_
#                                             (npy checkpoint ...); default all
# Environment:
#   FUZZ_BUILD   build folder (default build-fuzz), configured with clang, -DLOTGRAD_FUZZ=ON
#   FUZZ_OUT     logs, grown corpora and reproducers (default $FUZZ_BUILD/fuzz-out)
#   FUZZ_RUNS    also stop each target after this many executions (SECONDS 0 = no time limit)
#   FUZZ_JOBS    compile jobs (default: all cores)
#   FUZZ_NICE    niceness of the fuzzing processes (default 0)
#   FUZZ_KEEP_GOING=1  survey mode: libFuzzer's -fork=1 with -ignore_crashes/-ignore_ooms/
#                -ignore_timeouts, so a target keeps fuzzing past a finding and collects every
#                reproducer (still a failure at the end); stop it with SECONDS
#
# Exits non-zero when any target crashes, leaks, times out (-timeout=10 per input) or runs
# out of memory (-rss_limit_mb=2048), naming the target and the reproducer; rerun one with
#   $FUZZ_BUILD/fuzz/fuzz_<target> <reproducer>
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-30}
shift || true
BUILD=${FUZZ_BUILD:-build-fuzz}
OUT=${FUZZ_OUT:-$BUILD/fuzz-out}

# --- toolchain: clang with libFuzzer and libomp (Debian packages), installed when missing ------
have_libfuzzer() {
  command -v clang++ >/dev/null 2>&1 || return 1
  local probe
  probe=$(mktemp -d)
  echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"$probe/p.cpp"
  clang++ -fsanitize=fuzzer,address,undefined -fopenmp "$probe/p.cpp" -o "$probe/p" >/dev/null 2>&1
  local rc=$?
  rm -rf "$probe"
  return $rc
}
if ! have_libfuzzer; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "fuzz: installing clang, libFuzzer and libomp (clang-14 libclang-rt-14-dev libomp-14-dev)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    clang-14 libclang-rt-14-dev libomp-14-dev >/dev/null
  command -v clang++ >/dev/null 2>&1 || export PATH="/usr/lib/llvm-14/bin:$PATH"
  have_libfuzzer || { echo "fuzz: clang++ cannot link -fsanitize=fuzzer after installing; giving up" >&2; exit 1; }
fi
bash scripts/setup.sh >/dev/null

# --- build -----------------------------------------------------------------------------------
launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DLOTGRAD_FUZZ=ON \
  -DLOTGRAD_BUILD_TESTS=OFF -DLOTGRAD_NATIVE=OFF "${launcher[@]}" >/dev/null
ninja -C "$BUILD" -j "${FUZZ_JOBS:-$(nproc)}" fuzz_targets

# --- run ---------------------------------------------------------------------------------------
if (($#)); then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_*.cpp; do targets+=("$(basename "$f" .cpp | sed 's/^fuzz_//')"); done
fi
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
failed=()
printf '%-16s %10s %8s %8s %8s %8s  %s\n' target execs exec/s seconds cov ft result
for t in "${targets[@]}"; do
  bin="$BUILD/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz: no target fuzz_$t (have: $(ls fuzz/fuzz_*.cpp | xargs -n1 basename | tr '\n' ' '))" >&2; exit 2; }
  work="$OUT/$t"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp -r "fuzz/corpus/$t/." "$work/corpus/"
  args=(-rss_limit_mb=2048 -timeout=10 -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$work/artifacts/")
  [ "$SECONDS_PER_TARGET" != 0 ] && args+=(-max_total_time="$SECONDS_PER_TARGET")
  [ -n "${FUZZ_RUNS:-}" ] && args+=(-runs="$FUZZ_RUNS")
  [ "${FUZZ_KEEP_GOING:-0}" = 1 ] && args+=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
  start=$(date +%s)
  rc=0
  nice -n "${FUZZ_NICE:-0}" "$bin" "${args[@]}" "$work/corpus" >"$work/log" 2>&1 || rc=$?
  secs=$(($(date +%s) - start))
  # Figures from the log; "?" where a run left none (e.g. killed before it printed stats).
  mkdir -p "$work/artifacts" && touch "$work/log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1 || true)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -1 || true)
  if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then  # fork mode: "#<execs>: cov: ... exec/s: ..." lines
    execs=$( (grep -oE '^#[0-9]+: cov' "$work/log" || true) | tail -1 | tr -dc 0-9)
    rate=$( (grep -E '^#[0-9]+: cov' "$work/log" || true) | tail -1 | (grep -oE 'exec/s: [0-9]+' || true) | tr -dc 0-9)
  fi
  cov=$( (grep -oE 'cov: [0-9]+' "$work/log" || true) | tail -1 | cut -d' ' -f2)
  ft=$( (grep -oE 'ft: [0-9]+' "$work/log" || true) | tail -1 | cut -d' ' -f2)
  repro=$( (ls "$work/artifacts" || true) | head -1)
  nrepro=$( (ls "$work/artifacts" || true) | wc -l)
  if [ "$rc" -ne 0 ] || [ -n "$repro" ]; then
    kind=$( (grep -oE 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer): [a-z-]+|runtime error|FUZZ CHECK FAILED|deadly signal|out-of-memory|timeout' "$work/log" || true) | head -1)
    printf '%-16s %10s %8s %8s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$secs" "${cov:-?}" "${ft:-?}" "FAIL (exit $rc)"
    echo "fuzz: FAIL fuzz_$t: ${kind:-exit code $rc}; reproducer: ${repro:+$work/artifacts/$repro} ($nrepro in $work/artifacts); log: $work/log" >&2
    [ -n "$repro" ] && echo "fuzz:   rerun: $bin $work/artifacts/$repro" >&2
    (grep -E 'ERROR|SUMMARY|FUZZ CHECK|runtime error|#[0-9]+ 0x' "$work/log" || true) | head -25 | sed 's/^/fuzz:   /' >&2
    failed+=("$t")
  else
    printf '%-16s %10s %8s %8s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$secs" "${cov:-?}" "${ft:-?}" ok
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]} (logs and reproducers under $OUT)" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran without a crash, leak, timeout or OOM (logs under $OUT)"
