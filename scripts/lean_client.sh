#!/usr/bin/env bash
# The client at the edge, measured (issue 18): the flotilla-client binary's size, and for a
# site training the seed MLP and W2 (6.85 M parameters) in its own process, its peak RSS
# and CPU time per round, with and without `--threads 1`; the model must be the same for
# both, bit for bit. Runs `serve` and 4 flotilla-client processes on loopback. Writes
# docs/LEAN_CLIENT.md.
# Usage: scripts/lean_client.sh [ROUNDS] [W2_ROUNDS]   e.g. scripts/lean_client.sh 10 3
#   (release build: FLOTILLA_BIN_DIR=target/release once built; about 3 min after the build)
source "$(dirname "$0")/common.sh"
flotilla_bins release
rounds=${1:-10}; w2_rounds=${2:-3}
out=$(report_path docs LEAN_CLIENT.md)
w=$(mktemp -d); trap 'kill $(jobs -p) 2> /dev/null; rm -rf "$w"' EXIT
clients=4

# One federation: serve + $clients client processes. Prints "hash cpu_s_per_round_per_client max_rss_kB".
federation() { # name, features, samples, hidden, rounds, client flags...
  local name="$1" f="$2" s="$3" hidden="$4" r="$5"; shift 5
  "$coord" --log error synth --clients "$clients" --samples "$s" --features "$f" --hidden "$hidden" --out "$w/$name-data" > /dev/null
  local port=$((20000 + RANDOM % 20000))
  "$coord" --log error serve --insecure --listen "127.0.0.1:$port" --config "$w/$name-data/task.toml" --seed 7 \
    --min-clients "$clients" --rounds "$r" --grace 600 --lease 60 --max-columns 1024 --out "$w/$name-run" > /dev/null 2>&1 &
  local coord_pid=$! pids=()
  for k in $(seq 0 $((clients - 1))); do
    local site; site=$(printf "client%05d" "$k")
    /usr/bin/time -f "%U %S %M" -o "$w/$name-t$k" "$client" --log error --insecure --coordinator "http://127.0.0.1:$port" \
      --site "$site" --data "$w/$name-data/$site.csv" "$@" > /dev/null 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  wait "$coord_pid"
  local hash cpu rss
  hash=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['params_sha256'][:16])" "$w/$name-run/summary.json")
  cpu=$(cat "$w/$name"-t* | awk -v n="$clients" -v r="$r" '{ s += $1 + $2 } END { printf "%.3f", s / n / r }')
  rss=$(cat "$w/$name"-t* | awk '$3 > m { m = $3 } END { print m }')
  echo "$hash $cpu $rss"
}

size=$(stat -c %s "$client")
strip -o "$w/stripped" "$client" 2> /dev/null && stripped=$(stat -c %s "$w/stripped") || stripped=
read -r mlp_hash mlp_cpu mlp_rss < <(federation mlp 20 500 64,32 "$rounds")
read -r mlp1_hash mlp1_cpu mlp1_rss < <(federation mlp1 20 500 64,32 "$rounds" --threads 1)
read -r w2_hash w2_cpu w2_rss < <(federation w2 784 200 2048,2048,512 "$w2_rounds")
read -r w21_hash w21_cpu w21_rss < <(federation w21 784 200 2048,2048,512 "$w2_rounds" --threads 1)
[ "$mlp_hash" = "$mlp1_hash" ] && [ "$w2_hash" = "$w21_hash" ] || { echo "lean_client: --threads 1 changed the model ($mlp_hash/$mlp1_hash, $w2_hash/$w21_hash)" >&2; exit 1; }

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
{
  echo "# The client at the edge"
  echo
  echo "\`scripts/lean_client.sh $rounds $w2_rounds\` on $(date -u +%Y-%m-%d), $(nproc) cores, release build, burn-ndarray: \`serve\` and $clients"
  echo "\`flotilla-client\` processes on loopback (plaintext), synthetic data (\`synth\`). CPU is user + system"
  echo "time of one client process divided by the rounds (training, evaluation, transfers, start-up); peak"
  echo "RSS is the largest of the $clients clients."
  echo
  echo "Binary: \`flotilla-client\` is $(mb "$size") MB${stripped:+, $(mb "$stripped") MB stripped} (it carries both CPU backends, burn-ndarray and burn-flex)."
  echo
  echo "| model | parameters | threads | CPU s per round | peak RSS MB | model copies in RSS | global model hash |"
  echo "|---|---|---|---|---|---|---|"
  row() { echo "| $1 | $2 | $3 | $4 | $(awk -v k="$5" 'BEGIN { printf "%.0f", k / 1024 }') | $(awk -v k="$5" -v p="$6" 'BEGIN { if (p < 100000) print "—"; else printf "%.1f", k * 1024 / (4 * p) }') | \`$7\` |"; }
  row "seed MLP (20-64-32-1), 500 rows a site" 3,457 all "$mlp_cpu" "$mlp_rss" 3457 "$mlp_hash"
  row "seed MLP, \`--threads 1\`" 3,457 1 "$mlp1_cpu" "$mlp1_rss" 3457 "$mlp1_hash"
  row "W2 (784-2048-2048-512-1), 200 rows a site" 6,853,633 all "$w2_cpu" "$w2_rss" 6853633 "$w2_hash"
  row "W2, \`--threads 1\`" 6,853,633 1 "$w21_cpu" "$w21_rss" 6853633 "$w21_hash"
  echo
  echo "Model copies: peak RSS over the model's f32 size (27.4 MB for W2): the global model, the local model,"
  echo "its gradients and Adam's two moments are five, the delta and the model a delta download is applied"
  echo "to one or two more; the binary, the runtime and the data are the rest."
  echo
  echo "The hashes show that \`--threads\` changes no bit of the model (the script fails otherwise; the"
  echo "in-process test \`threads::the_thread_cap_changes_no_bit_of_the_model\` checks the same)."
} > "$out"
cat "$out"
