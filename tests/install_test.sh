#!/usr/bin/env bash
# Installs the built tree into a temporary prefix, then configures, builds and runs an outside
# program against it with find_package(lotgrad). Args: SOURCE_DIR BINARY_DIR [SANITIZE]
# SANITIZE (the tree's LOTGRAD_SANITIZE, e.g. address,undefined): the installed library is
# instrumented, so the outside program is built with the same flags.
set -euo pipefail
src=$1; bin=$2; sanitize=${3:-}
flags=()
if [ -n "$sanitize" ]; then
  f="-fsanitize=$sanitize -fno-sanitize-recover=all -fno-omit-frame-pointer"
  flags=(-DCMAKE_CXX_FLAGS="$f" -DCMAKE_EXE_LINKER_FLAGS="$f")
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cmake --install "$bin" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/include/lotgrad/lotgrad.h"
test -f "$work/prefix/lib/cmake/lotgrad/lotgradConfig.cmake"
cmake -S "$src/tests/install_consumer" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" "${flags[@]}" >/dev/null
cmake --build "$work/build" >/dev/null
"$work/build/consumer"
