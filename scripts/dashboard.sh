#!/usr/bin/env bash
# The live dashboard in a real browser: starts `simulate` with --metrics-listen, opens the page
# in headless Chromium twice, checks that it shows the sites and that the rounds advance, and
# saves a screenshot to docs/dashboard.png (or $FLOTILLA_REPORT_DIR/dashboard.png).
# Installs Debian's chromium with apt-get when it is missing (as root).
# Usage: [FLOTILLA_BIN_DIR=target/release] scripts/dashboard.sh   (about 30 s after the build)
source "$(dirname "$0")/common.sh"
flotilla_bins debug
if ! command -v chromium > /dev/null; then
  echo "installing chromium (apt-get)" >&2
  apt-get install -y chromium > /dev/null
fi
w=$(mktemp -d)
port=$(( 20000 + RANDOM % 20000 ))
"$coord" simulate --scenario hospitals --rounds 150 --no-baselines --quiet --insecure \
  --metrics-listen "127.0.0.1:$port" --out "$w/run" > "$w/sim.log" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true; rm -rf "$w"' EXIT
fail() { echo "dashboard: FAILED: $*" >&2; tail -5 "$w/sim.log" >&2; exit 1; }
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/readyz" > /dev/null || fail "the metrics port never became ready"
browse() { # extra chromium flags...
  chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d -p "$w")" \
    --window-size=1280,860 --virtual-time-budget=4000 "$@" "http://127.0.0.1:$port/" 2> /dev/null
}
round_of() { sed -n 's/.*id="round">\([0-9]*\) \/ .*/\1/p' "$1" | head -1; }
browse --dump-dom > "$w/first.html"
for site in Cleveland Hungary Switzerland "VA Long Beach"; do
  grep -q "<td>$site</td>" "$w/first.html" || fail "the page does not list site $site"
done
grep -q 'class="on">connected' "$w/first.html" || fail "no site shows as connected"
grep -q "<polyline" "$w/first.html" || fail "the chart has no curve"
first=$(round_of "$w/first.html")
sleep 2
browse --dump-dom > "$w/second.html"
second=$(round_of "$w/second.html")
[ -n "$first" ] && [ -n "$second" ] && [ "$second" -gt "$first" ] || fail "the rounds do not advance on the page ($first, then $second)"
out=$(report_path docs dashboard.png)
browse --screenshot="$out" > /dev/null
[ -s "$out" ] || fail "no screenshot"
echo "dashboard: sites listed, rounds $first → $second, screenshot $out"
