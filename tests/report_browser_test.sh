#!/usr/bin/env bash
# lotgrad report in a real browser (Debian's chromium, headless; installed with apt-get when
# missing and we are root; without it the test FAILS, it never skips).
# Usage: report_browser_test.sh LOTGRAD_BINARY PNG_INK_BINARY SCREENSHOT_OUT
#  1. a deliberately broken page must be caught by both error detectors (so they can fail);
#  2. two tiny runs (softmax, LOTFormer) -> report.html, rendered headless:
#     - console: chromium --enable-logging=stderr --v=0 logs every console message and every
#       uncaught exception as ":CONSOLE" lines; any such line fails the test;
#     - DOM (--dump-dom, after the load event): the page's inline self-check (window 'load')
#       writes data-status="ok" into #selfcheck only when every figure holds a decoded image or
#       a chart with points and a caption, every table has body rows and no script error
#       fired; the test also counts the figures and tables in the dumped DOM;
#     - screenshot: far more ink (non-white pixels, png_ink) than a blank page's screenshot;
#       written to SCREENSHOT_OUT;
#  3. 10 synthetic runs of 5,000 steps: the page's own load time (performance.now() at the
#     load event, in #selfcheck) must be under 2 s; the whole chromium run's time is printed.
set -euo pipefail
bin=$1; ink=$2; shot_out=$3
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

find_browser() { for b in chromium chromium-browser; do command -v "$b" && return 0; done; return 1; }
if ! browser=$(find_browser); then
  echo "report_browser_test: chromium missing; installing Debian's chromium"
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || true
  fi
  browser=$(find_browser) || { echo "FAIL: chromium is not installed and could not be installed (run as root: apt-get install chromium)"; exit 1; }
fi
echo "browser: $browser ($("$browser" --version 2>/dev/null | head -1))"

flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --enable-logging=stderr --v=0)
# render PAGE OUT_PREFIX: the DOM after load in OUT.dom, chromium's log in OUT.log
render() { "$browser" "${flags[@]}" --dump-dom "file://$1" >"$2.dom" 2>"$2.log"; }
console_errors() { grep -E ":CONSOLE[(:]|Uncaught" "$1" || true; }
status() { grep -o 'id="selfcheck" data-status="[a-z]*"' "$1" | sed 's/.*data-status="//; s/"//'; }

# 1. the detectors catch a broken page
cat >"$work/bad.html" <<'EOF'
<!DOCTYPE html><html><body><figure><figcaption>x</figcaption></figure><table><tbody></tbody></table>
<p id="selfcheck" data-status="pending"></p>
<script>window.addEventListener('load',function(){document.getElementById('selfcheck').setAttribute('data-status',
document.querySelectorAll('tbody tr').length?'ok':'fail');});console.error("deliberate");no_such_function();</script></body></html>
EOF
render "$work/bad.html" "$work/bad"
[ -n "$(console_errors "$work/bad.log")" ] || { echo "FAIL: the console detector missed a deliberate error"; exit 1; }
[ "$(status "$work/bad.dom")" = fail ] || { echo "FAIL: the DOM detector missed an empty table"; exit 1; }

# 2. a real report
tiny="--task listops --min-len 3 --max-len 12 --train-size 64 --val-size 16 --test-size 16 --d-model 16 --mlp 16 --threads 2 --quiet"
"$bin" train $tiny --attention softmax --steps 8 --batch 8 --eval-every 2 --out "$work/softmax" >/dev/null
"$bin" train $tiny --attention lotformer --steps 8 --batch 8 --eval-every 2 --out "$work/lotformer" >/dev/null
"$bin" report "$work/softmax" "$work/lotformer" --out "$work/report.html" --examples 1 --threads 2 \
  --title "lotgrad report: softmax and LOTFormer on tiny ListOps"
render "$work/report.html" "$work/report"
errs=$(console_errors "$work/report.log")
[ -z "$errs" ] || { echo "FAIL: console errors:"; echo "$errs"; exit 1; }
grep -o 'selfcheck [a-zA-Z]*[^<]*' "$work/report.dom" | head -1
[ "$(status "$work/report.dom")" = ok ] || { echo "FAIL: the page's self-check did not pass"; exit 1; }
maps=$(grep -o '<figure class="map">' "$work/report.dom" | wc -l)
charts=$(grep -o '<figure class="chart">' "$work/report.dom" | wc -l)
tables=$(grep -o '<table' "$work/report.dom" | wc -l)
sections=$(grep -o '<section id="[a-z]*"' "$work/report.dom" | wc -l)
echo "DOM: $sections sections, $charts charts, $maps maps, $tables tables"
# maps: 2 runs x 1 example x 2 layers x 2 heads, and 6 mechanisms x 2 heads
[ "$maps" -eq $((2 * 2 * 2 + 6 * 2)) ] && [ "$charts" -eq 4 ] && [ "$tables" -eq 6 ] && [ "$sections" -eq 5 ] ||
  { echo "FAIL: figures or tables missing"; exit 1; }
"$browser" "${flags[@]}" --window-size=1400,2400 --screenshot="$work/report.png" "file://$work/report.html" 2>/dev/null
echo '<!DOCTYPE html><html><body></body></html>' >"$work/blank.html"
"$browser" "${flags[@]}" --window-size=1400,2400 --screenshot="$work/blank.png" "file://$work/blank.html" 2>/dev/null
read -r w h ink_report < <("$ink" "$work/report.png")
read -r _ _ ink_blank < <("$ink" "$work/blank.png")
echo "screenshot $w x $h: $ink_report non-white pixels (blank page: $ink_blank)"
[ "$ink_report" -gt $((ink_blank + w * h / 20)) ] || { echo "FAIL: the screenshot is nearly blank"; exit 1; }
mkdir -p "$(dirname "$shot_out")"; cp "$work/report.png" "$shot_out"

# 3. 10 runs x 5,000 steps (synthetic logs) open in under 2 s
for k in 0 1 2 3 4 5 6 7 8 9; do
  mkdir -p "$work/big/run$k"
  awk -v k=$k 'BEGIN { for (s = 1; s <= 5000; s++) {
      printf "{\"loss\":%.6f,\"lr\":0.0005,\"step\":%d,\"tokens_per_s\":1000,\"train_acc\":%.4f}\n", 2*exp(-s/1500)+0.05*sin(s*0.37+k), s, 0.5+0.4*s/5000
      if (s % 100 == 0) printf "{\"best_dev\":0.5,\"dev_acc\":%.4f,\"step\":%d}\n", 0.3+0.5*s/5000, s } }' >"$work/big/run$k/metrics.jsonl"
done
"$bin" report "$work"/big/run* --out "$work/big.html" --threads 2 >/dev/null
t0=$(date +%s.%N); render "$work/big.html" "$work/big"; t1=$(date +%s.%N)
errs=$(console_errors "$work/big.log")
[ -z "$errs" ] || { echo "FAIL: console errors (large report):"; echo "$errs"; exit 1; }
[ "$(status "$work/big.dom")" = ok ] || { echo "FAIL: the large report's self-check did not pass"; exit 1; }
load_ms=$(grep -o 'load_ms=[0-9]*' "$work/big.dom" | head -1 | cut -d= -f2)
echo "10 runs x 5000 steps: $(($(stat -c %s "$work/big.html") / 1024)) KB, load event at $load_ms ms;" \
     "chromium start to DOM dump $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
[ "$load_ms" -lt 2000 ] || { echo "FAIL: the large report took $load_ms ms to load"; exit 1; }
echo "report_browser_test: ok"
