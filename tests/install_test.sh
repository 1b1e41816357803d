#!/usr/bin/env bash
# Installs the built tree into a temporary prefix, then configures, builds and runs an outside
# program against it with find_package(lotgrad). Args: SOURCE_DIR BINARY_DIR
set -euo pipefail
src=$1; bin=$2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cmake --install "$bin" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/include/lotgrad/lotgrad.h"
test -f "$work/prefix/lib/cmake/lotgrad/lotgradConfig.cmake"
cmake -S "$src/tests/install_consumer" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/build" >/dev/null
"$work/build/consumer"
