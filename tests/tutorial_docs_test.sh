#!/usr/bin/env bash
# The tutorials in docs/ show their code verbatim from tests/test_tutorial_*.cpp, which ctest
# compiles and runs. Usage: tutorial_docs_test.sh SOURCE_DIR
# Each code block of a tutorial is preceded by a line
#   <!-- snippet: tests/test_tutorial_x.cpp NAME -->
# and must equal the lines between "// [snippet NAME]" and "// [end NAME]" of that file. Every
# snippet of the file must appear in the tutorial, so no tested code is left out of the text.
# A block preceded by "<!-- output: test_tutorial_x -->" is printed output: with TESTS_DIR given
# (the built test programs), its lines must appear, in order and whole, in that program's output.
# Usage: tutorial_docs_test.sh SOURCE_DIR [TESTS_DIR]
set -euo pipefail
src=$1; bins=${2:-}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fail=0
for doc in "$src"/docs/tutorial_*.md; do
  n=0
  # NAME FILE pairs, and each block written to $work/block.<k>
  awk -v out="$work/block" '
    /^<!-- snippet: / { file = $3; name = $4; want = 1; next }
    want && /^```/ { inside = 1; want = 0; k++; print file, name > (out ".list"); next }
    inside && /^```/ { inside = 0; next }
    inside { print > (out "." k) }
  ' "$doc"
  [ -s "$work/block.list" ] || { echo "FAIL: $doc shows no snippet"; fail=1; continue; }
  used=()
  while read -r file name; do
    n=$((n + 1)); used+=("$file $name")
    [ -f "$src/$file" ] || { echo "FAIL: $doc: no file $file"; fail=1; continue; }
    awk -v name="$name" '
      $0 ~ "^// \\[end " name "\\]$" { on = 0 }
      on { print }
      $0 ~ "^// \\[snippet " name "\\]$" { on = 1; found = 1 }
      END { if (!found) exit 3 }
    ' "$src/$file" >"$work/want" || { echo "FAIL: $doc: no snippet $name in $file"; fail=1; continue; }
    touch "$work/block.$n"
    if ! diff -u "$work/want" "$work/block.$n" >"$work/diff"; then
      echo "FAIL: $doc: the block of $file $name differs from the file:"; cat "$work/diff"; fail=1
    fi
  done <"$work/block.list"
  for file in $(cut -d' ' -f1 "$work/block.list" | sort -u); do  # every snippet of the file shown
    for name in $(sed -n 's|^// \[snippet \([a-z_]*\)\]$|\1|p' "$src/$file"); do
      printf '%s\n' "${used[@]}" | grep -qx "$file $name" || { echo "FAIL: $doc does not show $file $name"; fail=1; }
    done
  done
  if [ -n "$bins" ]; then
    awk -v out="$work/out" '
      /^<!-- output: / { bin = $3; want = 1; next }
      want && /^```/ { inside = 1; want = 0; k++; print bin > (out ".list"); next }
      inside && /^```/ { inside = 0; next }
      inside { print > (out "." k) }
    ' "$doc"
    k=0
    touch "$work/out.list"
    while read -r bin; do
      k=$((k + 1))
      "$bins/$bin" >"$work/printed" 2>&1 || { echo "FAIL: $bin failed"; fail=1; continue; }
      grep -F -x -f "$work/out.$k" "$work/printed" >"$work/seen" || true
      diff -u "$work/out.$k" "$work/seen" >"$work/diff" ||
        { echo "FAIL: $doc: the output shown is not what $bin prints:"; cat "$work/diff"; fail=1; }
    done <"$work/out.list"
    [ "$k" -eq 0 ] || echo "$(basename "$doc"): $k printed outputs match"
    rm -f "$work"/out.*
  fi
  echo "$(basename "$doc"): $n snippets match"
  rm -f "$work"/block.*
done
[ "$(ls "$src"/docs/tutorial_*.md | wc -l)" -ge 3 ] || { echo "FAIL: fewer than three tutorials"; fail=1; }
exit $fail
