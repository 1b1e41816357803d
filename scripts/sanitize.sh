#!/usr/bin/env bash
# The sanitizer job: builds the whole tree with AddressSanitizer and UndefinedBehaviorSanitizer
# (GCC, -fno-sanitize-recover=all: the first finding fails its test) into build-asan/ and runs
# the whole ctest suite under them with leak detection on. .ci/run calls it after the README's
# test command. Usage: bash scripts/sanitize.sh [BUILD_DIR]   (about 15 min on 2 cores from cold)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-asan}
bash scripts/setup.sh
# -O1: a sanitizer build is for finding bugs; -O3 would double its compile time for little
# speed. No -DNDEBUG: asserts stay on. -g1: line numbers in the reports.
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Sanitize -DCMAKE_CXX_FLAGS_SANITIZE="-O1 -g1" \
  -DLOTGRAD_SANITIZE=address,undefined >/dev/null
cmake --build "$dir"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LOTGRAD_POISON_UNINIT=1  # uninitialised tensor memory reads as NaN (core/tensor.cpp)
ctest --test-dir "$dir" -j2 --output-on-failure
# A graph of 10 million ops is freed without recursion (tests/test_autograd.cpp), alone: under
# ASan it takes 11.5 GB and about 3 minutes of CPU.
LOTGRAD_GRAPH_OPS=10000000 "$dir/tests/test_autograd" -tc="a graph of 1?000?000 ops*"
