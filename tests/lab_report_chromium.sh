#!/usr/bin/env bash
# The lab report in headless Chromium: `sdpa lab report --quick` must give a page that
#   - is self-contained (no external <script src> or <link href>),
#   - loads without an uncaught exception, a rejected promise or a console error,
#   - draws every chart: one canvas per chart in the page's data, each with coloured (data-series)
#     pixels — a blank canvas or one with axes only fails.
# The checks run in a copy of the page with a probe script inserted at the top of <head>; the page
# itself is also loaded unmodified with Chromium's console log on stderr, and a screenshot is taken.
#
# Usage: lab_report_chromium.sh SDPA_BINARY [ARTIFACT_DIR]   (the report, probe output and
# screenshot are kept in ARTIFACT_DIR when given)
# Exit 77 (ctest SKIP_RETURN_CODE) when no Chromium can run here, unless SDPA_REQUIRE_CHROMIUM=1
# (set by CI), which turns that into a failure.
set -euo pipefail
sdpa=$1
artifacts=${2:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

skip() {
  echo "lab_report_chromium: cannot test: $*"
  if [[ "${SDPA_REQUIRE_CHROMIUM:-0}" == 1 ]]; then
    echo "lab_report_chromium: SDPA_REQUIRE_CHROMIUM=1, so this is a failure"
    exit 1
  fi
  exit 77
}
fail() {
  echo "lab_report_chromium: FAIL: $*"
  exit 1
}

browser=""
for candidate in chromium chromium-browser google-chrome; do
  if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
done
[[ -n $browser ]] || skip "no chromium on PATH (Debian package: chromium)"
# --no-sandbox: containers and root (CI) have no user namespaces for the sandbox; the page is ours.
flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
       --disable-extensions --disable-background-networking --user-data-dir="$work/profile")
timeout 60 "$browser" "${flags[@]}" --dump-dom about:blank >"$work/blank.txt" 2>"$work/blank.err" ||
  skip "$browser does not start: $(tail -n 3 "$work/blank.err" | tr '\n' ' ')"

"$sdpa" lab report --quick --no-progress --out "$work/report.html" >"$work/report.txt" ||
  fail "sdpa lab report failed: $(tail -n 5 "$work/report.txt")"
report=$work/report.html

if grep -Eiq '<script[^>]*[[:space:]]src=|<link[^>]*[[:space:]]href=' "$report"; then
  fail "the page loads external resources: $(grep -Eio '<(script|link)[^>]*(src|href)=[^>]*>' "$report" | head -3)"
fi

# The probe: records errors from the start, then after load counts the canvases and, per canvas,
# the pixels painted in a colour (data series use saturated colours; axes and text are grey).
cat >"$work/probe.html" <<'PROBE'
<script>
window.__probe = { errors: [] };
window.addEventListener('error', function (e) { __probe.errors.push('error: ' + e.message); });
window.addEventListener('unhandledrejection', function (e) { __probe.errors.push('rejection: ' + e.reason); });
(function () {
  var original = console.error;
  console.error = function () {
    __probe.errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    original.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  setTimeout(function () {
    var canvases = document.querySelectorAll('canvas'), problems = [];
    canvases.forEach(function (c) {
      var coloured = 0;
      if (c.width > 0 && c.height > 0) {
        var px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (var i = 0; i < px.length; i += 4) {
          var hi = Math.max(px[i], px[i + 1], px[i + 2]), lo = Math.min(px[i], px[i + 1], px[i + 2]);
          if (px[i + 3] > 0 && hi - lo > 60) coloured++;
        }
      }
      if (coloured < 200) problems.push(c.id + ': ' + coloured + ' coloured pixels on ' + c.width + 'x' + c.height);
    });
    var charts = 0;
    try {
      JSON.parse(document.getElementById('lab-data').textContent).experiments.forEach(function (e) { charts += e.charts.length; });
    } catch (e) { __probe.errors.push('lab-data: ' + e); }
    var out = document.createElement('pre');
    out.id = 'probe-result';
    out.textContent = 'PROBE canvases=' + canvases.length + ' charts=' + charts + ' blank=' + problems.length +
        ' errors=' + __probe.errors.length + '\n' + problems.concat(__probe.errors).join('\n');
    document.body.appendChild(out);
  }, 200);
});
</script>
PROBE
# Insert the probe right after <head> (first occurrence only).
awk -v probe="$work/probe.html" '
  !done && /<head>/ { print; while ((getline line < probe) > 0) print line; done = 1; next }
  { print }' "$report" >"$work/probed.html"

timeout 120 "$browser" "${flags[@]}" --window-size=1280,2000 --virtual-time-budget=15000 \
  --dump-dom "file://$work/probed.html" >"$work/dom.html" 2>"$work/probed.err" ||
  fail "$browser --dump-dom failed: $(tail -n 3 "$work/probed.err")"
summary=$(grep -o 'PROBE canvases=[0-9]* charts=[0-9]* blank=[0-9]* errors=[0-9]*' "$work/dom.html" || true)
[[ -n $summary ]] || fail "the probe did not report (scripts did not run?); stderr: $(tail -n 3 "$work/probed.err")"
sed -n '/<pre id="probe-result">/,/<\/pre>/p' "$work/dom.html" | sed -e 's/<[^>]*>//g'
read -r canvases charts blank errors < <(echo "$summary" |
  sed -E 's/PROBE canvases=([0-9]+) charts=([0-9]+) blank=([0-9]+) errors=([0-9]+)/\1 \2 \3 \4/')
((charts >= 6)) || fail "only $charts charts in the page's data (expected at least one per experiment)"
((canvases == charts)) || fail "$canvases canvases for $charts charts"
((blank == 0)) || fail "$blank of $canvases charts drew no data"
((errors == 0)) || fail "$errors errors while loading"

# The unmodified page: Chromium's own console log must show no error either; and a screenshot.
timeout 120 "$browser" "${flags[@]}" --enable-logging=stderr --v=0 --window-size=1280,6000 \
  --virtual-time-budget=15000 --screenshot="$work/report.png" "file://$report" \
  >"$work/shot.out" 2>"$work/shot.err" || fail "$browser --screenshot failed: $(tail -n 3 "$work/shot.err")"
if grep -E 'CONSOLE' "$work/shot.err" | grep -Eiq 'uncaught|error'; then
  fail "console errors: $(grep -E 'CONSOLE' "$work/shot.err" | head -3)"
fi
[[ -s $work/report.png ]] || fail "no screenshot"
size=$(stat -c %s "$work/report.png")
((size > 50000)) || fail "screenshot is only $size bytes (a blank page?)"

if [[ -n $artifacts ]]; then
  mkdir -p "$artifacts"
  cp "$report" "$work/report.png" "$work/dom.html" "$artifacts/"
fi
echo "lab_report_chromium: OK ($charts charts drawn, no errors; screenshot $size bytes)"
