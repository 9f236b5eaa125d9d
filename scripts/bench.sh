#!/usr/bin/env bash
# Performance workloads of issue 7 through the real binaries (release build), the limits they
# are measured against, and the ratios; writes BENCHMARKS.md.
# Usage: scripts/bench.sh [--no-scale]   (--no-scale skips the 1,000- and 10,000-client runs)
# Needs GNU time at /usr/bin/time (wall, CPU and peak RSS of every process).
# FLOTILLA_BIN_DIR and FLOTILLA_REPORT_DIR: see scripts/common.sh (the limits and kernels are
# criterion benchmarks, which `cargo bench` builds in any case; set CARGO_TARGET_DIR for a
# read-only checkout).
source "$(dirname "$0")/common.sh"
scale=1
[ "${1:-}" = "--no-scale" ] && scale=0
[ -x /usr/bin/time ] || { echo "scripts/bench.sh needs GNU time at /usr/bin/time" >&2; exit 1; }
flotilla_bins release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
report="$work/report.md"

lo_rx() { awk '$1 == "lo:" { print $2 }' /proc/net/dev; }
# Sum of the `seconds` column (rounds only, round 0 is the initial evaluation) and the count.
rounds_time() { awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i } NR > 2 { s += $c["seconds"]; n++ } END { printf "%.3f %d\n", s, n }' "$1"; }
final_accuracy() { awk -F, 'NR > 1 { a = $2 } END { printf "%.3f", a }' "$1"; }
timed() { # file, command...: GNU time's "wall user sys maxrss_kB" into file
  local f="$1"; shift
  /usr/bin/time -f "%e %U %S %M" -o "$f" "$@"
}

# In-process simulation: one process holds the coordinator and every client.
simulate() { # label, clients, samples, features, rounds, extra flags...
  local label="$1" c="$2" s="$3" f="$4" r="$5"; shift 5
  local before after
  before=$(lo_rx)
  if ! timed "$work/t" "$coord" --log error simulate --synthetic --clients "$c" --samples "$s" --features "$f" --rounds "$r" \
    --no-baselines --quiet --insecure --lease 60 --out "$work/run" --force "$@" > /dev/null 2> "$work/err"; then
    echo "| $label | in-process | $c × $s × $f, $r rounds | failed: $(tail -1 "$work/err" | cut -c1-160) | | | | | | |" >> "$report"
    echo "0 1" > "$work/last"
    return
  fi
  after=$(lo_rx)
  read -r wall user sys rss < "$work/t"
  read -r rsum rn < <(rounds_time "$work/run/metrics.csv")
  echo "| $label | in-process | $c × $s × $f, $r rounds | $wall | $rsum | $(awk -v a="$rsum" -v n="$rn" 'BEGIN { printf "%.3f", a / n }') | $(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }') | $((rss / 1024)) | $(awk -v b="$((after - before))" -v c="$c" -v n="$rn" 'BEGIN { printf "%.0f", b / (c * (n + 1)) }') | $(final_accuracy "$work/run/metrics.csv") |" >> "$report"
  echo "$rsum $rn" > "$work/last"
}

# Separate processes: a coordinator and one flotilla-client per site, on loopback.
processes() { # label, clients, samples, features, rounds, backend
  local label="$1" c="$2" s="$3" f="$4" r="$5" backend="${6:-ndarray}"
  "$coord" --log error synth --clients "$c" --samples "$s" --features "$f" --out "$work/data" > /dev/null
  local port=$((20000 + RANDOM % 20000)) before after
  before=$(lo_rx)
  timed "$work/t-coord" "$coord" --log error serve --insecure --listen "127.0.0.1:$port" --config "$work/data/task.toml" \
    --min-clients "$c" --rounds "$r" --grace 600 --out "$work/run" --force &
  local coord_pid=$!
  local pids=()
  for k in $(seq 0 $((c - 1))); do
    local name; name=$(printf "client%05d" "$k")
    timed "$work/t-$name" "$client" --log error --insecure --coordinator "http://127.0.0.1:$port" --site "$name" --data "$work/data/$name.csv" --backend "$backend" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  wait "$coord_pid"
  after=$(lo_rx)
  read -r wall user sys rss < "$work/t-coord"
  local cpu max_client
  cpu=$(cat "$work"/t-* | awk '{ s += $2 + $3 } END { print s }')
  max_client=$(cat "$work"/t-client* | awk '$4 > m { m = $4 } END { print m }')
  read -r rsum rn < <(rounds_time "$work/run/metrics.csv")
  echo "| $label | $c processes + coordinator | $c × $s × $f, $r rounds | $wall | $rsum | $(awk -v a="$rsum" -v n="$rn" 'BEGIN { printf "%.3f", a / n }') | $cpu | $((rss / 1024)) coord., $((max_client / 1024)) per client | $(awk -v b="$((after - before))" -v c="$c" -v n="$rn" 'BEGIN { printf "%.0f", b / (c * (n + 1)) }') | $(final_accuracy "$work/run/metrics.csv") |" >> "$report"
  echo "$rsum $rn" > "$work/last"
  rm -rf "$work/data" "$work/run" "$work"/t-*
}

{
  echo "| workload | processes | data | wall s (startup included) | rounds s | per round s | CPU s | peak RSS MiB | loopback bytes per client per round | final accuracy |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$report"
simulate "W1 many clients" 100 500 20 10
w1=$(cat "$work/last")
simulate "W1 many clients, flex" 100 500 20 10 --backend flex
w1_flex=$(cat "$work/last")
processes "W1 many clients" 10 5000 20 10
processes "W1 many clients, flex" 10 5000 20 10 flex
simulate "W2 big model (784-2048-2048-512-1)" 10 200 784 5 --hidden 2048,2048,512 --max-columns 1024
w2=$(cat "$work/last")
processes "W3 hospitals-sized" 5 120 30 20
w3=$(cat "$work/last")
processes "W3 hospitals-sized, flex" 5 120 30 20 flex
w3_flex=$(cat "$work/last")
if [ "$scale" = 1 ]; then
  simulate "scale" 1000 50 20 3
  simulate "scale" 10000 50 20 3
  simulate "scale, flex" 10000 50 20 3 --backend flex
fi

limits="$work/limits.md"
cargo bench --locked -p flotilla-coordinator --bench limits 2>/dev/null | grep '^|' > "$limits"
cargo bench --locked -p flotilla-tests --bench transfer 2>/dev/null | grep '^|' >> "$limits"
train() { # workload (W1, W3), backend: seconds of training alone
  awk -F'|' -v w="$1 round" -v b=", $2 " 'index($2, w) && index($2, b) { split($3, a, " "); print a[1] }' "$limits"
}
throughput() { # row label: the figure in brackets of its value, e.g. "(1234 MB/s)" gives 1234
  awk -F'|' -v l="$1" 'index($2, l) { print $3 }' "$limits" | sed -E 's/.*\(([0-9.]+).*/\1/'
}
kernels="$work/kernels.md"
# Criterion: one line per kernel with its median time and throughput.
cargo bench --locked -p flotilla-common --bench kernels 2>/dev/null | awk '
  $1 ~ /^[a-z_0-9]+\/[a-z_0-9]+\/[a-z_0-9]+$/ { name = $1 }
  { for (i = 1; i < NF; i++) {
      if ($i == "time:") t = $(i + 3) " " $(i + 4)
      if ($i == "thrpt:" && name != "") { printf "| %s | %s | %s %s |\n", name, t, $(i + 3), $(i + 4); name = "" }
  } }
' > "$kernels"

{
  echo "# Benchmarks"
  echo
  echo "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores,"
  echo "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(rustc --version), release build, plaintext gRPC on loopback; burn-ndarray"
  echo "backend unless a row says flex (\`--backend flex\`, burn 0.22's newer CPU backend)."
  echo "Synthetic data from \`flotilla-coordinator simulate --synthetic\` / \`synth\` (seed 42, skew 1.0); the seed MLP"
  echo "inputs → 64 → 32 → 1 unless stated, 1 local epoch, batch 32, Adam 0.001, every client every round."
  echo
  echo "What the profile showed, what changed and what stands in the way of each target: [docs/PERFORMANCE.md](docs/PERFORMANCE.md)."
  echo
  echo "## Workloads"
  echo
  cat "$report"
  echo
  echo "\"rounds s\" sums the per-round wall time the coordinator records (training, upload, aggregation,"
  echo "evaluation); \"loopback bytes\" is the growth of the loopback interface's received bytes during the run"
  echo "(gRPC, HTTP/2 and TCP framing included) divided by clients and rounds (the initial evaluation counts as one)."
  echo
  echo "## Limits (same machine, \`cargo bench -p flotilla-coordinator --bench limits\`)"
  echo
  cat "$limits"
  echo
  echo "## Kernels (criterion, \`cargo bench -p flotilla-common --bench kernels\`, median)"
  echo
  echo "seed_mlp: 4,097 parameters (16 KB); w2_mlp: 6,853,633 parameters (27.4 MB). Throughput in bytes of f32 model data."
  echo
  echo "| kernel | time | throughput |"
  echo "|---|---|---|"
  cat "$kernels"
  echo
  echo "## Ratios"
  echo
  ratio() { # "sum n" of a run, training-only seconds per round
    local sum n; read -r sum n <<< "$1"
    awk -v s="$sum" -v n="$n" -v t="$2" 'BEGIN { printf "%.2f", s / n / t }'
  }
  echo "- W1 in-process round time / training-only time: ndarray $(ratio "$w1" "$(train W1 ndarray)"), flex $(ratio "$w1_flex" "$(train W1 flex)") (target ≤ 1.2)."
  echo "- W3 rounds time for 20 rounds with 5 client processes: ndarray ${w3% *} s, flex ${w3_flex% *} s (target < 2 s); per round / training-only: ndarray $(ratio "$w3" "$(train W3 ndarray)"), flex $(ratio "$w3_flex" "$(train W3 flex)") (target ≤ 1.2)."
  echo "- Local training, samples/s on one thread (W1 round): ndarray $(throughput "W1 round (100 × 500 × 20, 1 epoch, one thread after the other), ndarray"), flex $(throughput "W1 round (100 × 500 × 20, 1 epoch, one thread after the other), flex") (PyTorch eager: about 85,000; target 2× that)."
  loop=$(throughput "loopback TCP")
  echo "- W2 model transfer / loopback throughput: download $(awk -v a="$(throughput "gRPC model download")" -v b="$loop" 'BEGIN { printf "%.2f", a / b }'), upload $(awk -v a="$(throughput "gRPC update upload")" -v b="$loop" 'BEGIN { printf "%.2f", a / b }') (target ≥ 0.5)."
  w2_bytes=$(awk -F'|' '/W2 big model/ { print $10 }' "$report" | xargs)
  # Ideal per client over the run: the first download, then per round one update up and one
  # model down (6,853,633 parameters × 4 bytes); the table divides by rounds + 1. Downloads
  # after the first are deltas (docs/COMPRESSION.md), so the ratio is now below 1.
  echo "- W2 bytes on the wire / ideal (27.41 MB × (2 × 5 rounds + 1) per client): $(awk -v b="$w2_bytes" 'BEGIN { printf "%.3f", b * 6 / (27414532 * 11) }') (target ≤ 1.05; below 1 since downloads are deltas)."
  agg=$(awk -F'|' '/exact aggregation/ { split($3, x, " "); print x[1] }' "$limits")
  bw=$(awk -F'|' '/memory bandwidth/ { split($3, x, " "); print x[1] }' "$limits")
  echo "- W2 aggregation throughput / memory bandwidth: $(awk -v a="$agg" -v b="$bw" 'BEGIN { printf "%.3f", a / b }') counting the f32 input, $(awk -v a="$agg" -v b="$bw" 'BEGIN { printf "%.2f", 9 * a / b }') counting the memory the exact i128 sum moves (36 bytes a value) (target ≥ 0.5; see docs/PERFORMANCE.md)."
} > "$(report_path . BENCHMARKS.md)"
cat "$(report_path . BENCHMARKS.md)"
