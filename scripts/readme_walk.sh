#!/usr/bin/env bash
# Walks the README's commands like a new user, with the binaries in $FLOTILLA_BIN_DIR (default:
# a debug build of this checkout), in WORK_DIR (default: a temporary folder, removed after),
# and checks what each answers: the main simulation, the run directory, a second run into the
# same folder, split and synth, certificates (init, request, sign), serve with four TLS
# sites, four sites with the example site policy and their audit, --resume of the finished
# run, and the refusals the README promises.
# Usage: [FLOTILLA_BIN_DIR=target/release] scripts/readme_walk.sh [WORK_DIR]
source "$(dirname "$0")/common.sh"
flotilla_bins debug
if [ -n "${1:-}" ]; then mkdir -p "$1"; w=$(cd "$1" && pwd); else w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; fi
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' ERR
step() { echo "== $*"; }
# The params_sha256 of the last round in a metrics.csv, found by its column name.
last_params() { awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "params_sha256") c = i } END { print $c }' "$1"; }
fail() { echo "readme_walk: FAILED: $*" >&2; exit 1; }
# Runs a command that must fail, and checks its stderr names each given word.
refused() { # "words…" -- command…
  local words="$1"; shift
  if "$@" > "$w/out" 2> "$w/err"; then fail "expected a refusal: $*"; fi
  for word in $words; do grep -qF -- "$word" "$w/err" || fail "the refusal of \`$*\` does not name $word: $(cat "$w/err")"; done
  echo "   refused: $(tail -1 "$w/err")"
}

step "simulate --scenario hospitals --out runs/hospitals"
"$coord" simulate --scenario hospitals --out "$w/runs/hospitals" | tee "$w/out"
grep -q "federated " "$w/out" || fail "no comparison table"
for f in metrics.csv accuracy.svg summary.json model.safetensors checkpoint.safetensors pki/ca.pem; do
  [ -e "$w/runs/hospitals/$f" ] || fail "runs/hospitals/$f is missing"
done
[ "$(head -1 "$w/runs/hospitals/metrics.csv")" = "round,accuracy,loss,auc,clients,selected,failed,rejected,attempts,evaluated,train_loss,seconds,epsilon,clip_norm,params_sha256,refused,record_epsilon,validation_loss,mae,rmse,r2" ] || fail "metrics.csv header"
for f in model-last.safetensors profile.json profile.svg site-metrics.csv; do
  [ -e "$w/runs/hospitals/$f" ] || fail "runs/hospitals/$f is missing"
done
[ "$(wc -l < "$w/runs/hospitals/metrics.csv")" = 22 ] || fail "metrics.csv should have a header and rounds 0..=20"
file_sha=$(sha256sum "$w/runs/hospitals/model.safetensors" | cut -d' ' -f1)
grep -q "\"model_file_sha256\": \"$file_sha\"" "$w/runs/hospitals/summary.json" || fail "model_file_sha256 is not the file's hash"
last_params=$(last_params "$w/runs/hospitals/metrics.csv")
python3 - "$w/runs/hospitals/summary.json" "$last_params" <<'PY' || fail "summary.json's models do not name the kept and the last round's models"
import json, sys
s = json.load(open(sys.argv[1]))
m = s["models"]
assert m["model-last.safetensors"]["params_sha256"] == sys.argv[2], "last"
assert m["model.safetensors"]["params_sha256"] == s["params_sha256"], "kept"
assert m["model.safetensors"]["file_sha256"] == s["model_file_sha256"], "file"
PY
grep -q '"config"' "$w/runs/hospitals/summary.json" || fail "summary.json has no config"

step "the same command again: refused, nothing touched; --force replaces"
before=$(sha256sum "$w/runs/hospitals/metrics.csv")
refused "runs/hospitals --force" "$coord" simulate --scenario hospitals --out "$w/runs/hospitals"
[ "$(sha256sum "$w/runs/hospitals/metrics.csv")" = "$before" ] || fail "a refused run changed metrics.csv"
"$coord" simulate --scenario hospitals --out "$w/runs/hospitals" --force --rounds 2 --no-baselines --quiet > /dev/null
[ "$(wc -l < "$w/runs/hospitals/metrics.csv")" = 4 ] || fail "--force did not replace the run"

step "your own data: init, simulate --data, predict, evaluate on an R-style export never seen"
# The bundled hospitals as R writes them: quoted words, NA for missing, CRLF line ends.
awk -F, 'BEGIN { OFS = "," } { for (i = 1; i <= NF; i++) { if ($i == "") $i = "NA"; else if ($i !~ /^-?[0-9.]+$/) $i = "\"" $i "\"" } printf "%s\r\n", $0 }' \
  data/heart_disease_uci.csv > "$w/study.csv"
"$coord" init --data "$w/study.csv" --label num --out "$w/study.toml"
grep -q '^drop = \["id"\]' "$w/study.toml" || fail "init did not suggest dropping the id column: $(cat "$w/study.toml")"
"$coord" simulate --data "$w/study.csv" --config "$w/study.toml" --clients 4 --out "$w/runs/study" --quiet > "$w/out"
[ -f "$w/runs/study/profile.json" ] || fail "simulate --data wrote no profile.json"
cut -d, -f1-15 "$w/study.csv" > "$w/new.csv"
"$client" predict --model "$w/runs/study/model.safetensors" --data "$w/new.csv" --out "$w/predictions.csv"
[ "$(wc -l < "$w/predictions.csv")" = 921 ] || fail "predict should write a header and 920 rows"
"$client" evaluate --model "$w/runs/study/model.safetensors" --data "$w/study.csv" | grep -q '"examples":920' || fail "evaluate"
printf 'id,age\n1,50\n' > "$w/wrong.csv"
refused "wrong.csv chol" "$client" predict --model "$w/runs/study/model.safetensors" --data "$w/wrong.csv" --out "$w/p2.csv"

step "split --scenario hospitals --out sites"
"$coord" split --scenario hospitals --out "$w/sites"
for s in Cleveland Hungary Switzerland "VA Long Beach"; do [ -f "$w/sites/$s.csv" ] || fail "sites/$s.csv is missing"; done

step "synth, then simulate --clients-dir: the test rows are no site"
"$coord" synth --clients 3 --samples 60 --features 4 --out "$w/synth"
[ -f "$w/synth/test/test.csv" ] && [ ! -e "$w/synth/test.csv" ] || fail "synth's test rows are not in test/test.csv"
"$coord" simulate --clients-dir "$w/synth" --config "$w/synth/task.toml" --rounds 2 --no-baselines --quiet --out "$w/runs/synth" > /dev/null
[ "$(awk -F, 'NR == 3 { print $6 }' "$w/runs/synth/metrics.csv")" = 3 ] || fail "--clients-dir should select 3 sites"

step "certificates: certs init for three hospitals, certs request + certs sign for Switzerland"
"$coord" certs init --out "$w/pki" --site Cleveland --site Hungary --site "VA Long Beach"
"$client" certs request --site Switzerland --out "$w/mykeys"
[ -f "$w/mykeys/Switzerland.csr" ] && [ -f "$w/mykeys/Switzerland.key" ] || fail "certs request did not write mykeys/Switzerland.{csr,key}"
"$coord" certs sign --ca "$w/pki/ca.pem" --ca-key "$w/pki/ca.key" --csr "$w/mykeys/Switzerland.csr" --out "$w/mykeys/Switzerland.pem"
refused "--csr Switzerland.csr" "$coord" certs sign --ca "$w/pki/ca.pem" --ca-key "$w/pki/ca.key" --csr "$w/Switzerland.csr" --out "$w/x.pem"
refused "--days" "$coord" certs sign --ca "$w/pki/ca.pem" --ca-key "$w/pki/ca.key" --csr "$w/mykeys/Switzerland.csr" --out "$w/x.pem" --days 0

step "serve with four TLS sites, 3 rounds"
port=$((20000 + RANDOM % 20000))
serve=("$coord" serve --listen "127.0.0.1:$port" --scenario hospitals --rounds 3 --min-clients 4
  --tls-cert "$w/pki/coordinator.pem" --tls-key "$w/pki/coordinator.key" --client-ca "$w/pki/ca.pem"
  --allow-site Cleveland --allow-site Hungary --allow-site Switzerland --allow-site "VA Long Beach" --out "$w/runs/served")
"${serve[@]}" 2> "$w/serve.log" & pids+=($!)
for s in Cleveland Hungary Switzerland "VA Long Beach"; do
  if [ "$s" = Switzerland ]; then keys="$w/mykeys"; else keys="$w/pki"; fi
  "$client" --coordinator "https://127.0.0.1:$port" --site "$s" --data "$w/sites/$s.csv" --ca "$w/pki/ca.pem" \
    --cert "$keys/$s.pem" --key "$keys/$s.key" 2> "$w/client-$s.log" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a process of the served federation failed (see $w/*.log)"; done
pids=()
grep -q "federation finished" "$w/serve.log" || fail "serve did not finish"
if grep -q $'\e\[' "$w/serve.log" "$w/client-Cleveland.log"; then fail "colour codes in redirected logs"; fi
served=$(last_params "$w/runs/served/metrics.csv")
"$coord" simulate --scenario hospitals --rounds 3 --no-baselines --quiet --out "$w/runs/sim3" > /dev/null
[ -n "$served" ] && [ "$(last_params "$w/runs/sim3/metrics.csv")" = "$served" ] || fail "served and simulated models differ"
echo "   served sites made the simulated model, bit for bit: $served"

step "the hospitals with their site policy (examples/site-policy.toml) and state directories, 2 rounds"
port2=$((port + 1))
"$coord" serve --listen "127.0.0.1:$port2" --scenario hospitals --rounds 2 --min-clients 4 \
  --tls-cert "$w/pki/coordinator.pem" --tls-key "$w/pki/coordinator.key" --client-ca "$w/pki/ca.pem" --out "$w/runs/policy" 2> "$w/serve-policy.log" & pids+=($!)
for s in Cleveland Hungary Switzerland "VA Long Beach"; do
  if [ "$s" = Switzerland ]; then keys="$w/mykeys"; else keys="$w/pki"; fi
  "$client" --coordinator "https://127.0.0.1:$port2" --site "$s" --data "$w/sites/$s.csv" --ca "$w/pki/ca.pem" \
    --cert "$keys/$s.pem" --key "$keys/$s.key" --policy examples/site-policy.toml --state-dir "$w/state/$s" 2> "$w/client-policy-$s.log" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a process of the federation with site policies failed (see $w/*policy*.log)"; done
pids=()
"$client" audit --state-dir "$w/state/Cleveland" | tee "$w/out"
grep -q "rounds trained: 2" "$w/out" && grep -q "refusals: 0" "$w/out" || fail "the audit of Cleveland does not show its 2 rounds"
if grep -q "dataset" "$w/out"; then fail "the column naming the hospital left the site"; fi
refused "bounds.min_batch_size" "$client" policy check --policy examples/site-policy.toml --task <(sed 's/batch_size = 32/batch_size = 1/' examples/hospitals.toml)

step "serve --resume on the finished run says it is complete"
timeout 30 "${serve[@]}" --resume > "$w/out" 2> "$w/err" || fail "serve --resume of a finished run: $(cat "$w/err")"
grep -q "is complete" "$w/out" || fail "serve --resume did not say the run is complete: $(cat "$w/out")"
refused "--resume --force" "${serve[@]}"

step "refusals at start"
refused "--insecure https://" "$client" --coordinator "https://127.0.0.1:$port" --site Cleveland --data "$w/sites/Cleveland.csv" --insecure
refused "--min-fit-results" "$coord" simulate --scenario hospitals --min-fit-results 5 --out "$w/runs/x1"
refused "--max-update-norm --secure-aggregation" "$coord" simulate --scenario hospitals --secure-aggregation --max-update-norm 1 --out "$w/runs/x2"
refused "--clients" "$coord" simulate --data data/heart_disease_uci.csv --config examples/hospitals.toml --partition column:dataset --clients 2 --out "$w/runs/x3"
refused "usable" "$coord" simulate --scenario hospitals --rounds 2 --no-baselines --quiet --max-update-norm 0.0001 --out "$w/runs/x4"
[ "$(wc -l < "$w/runs/x4/metrics.csv")" = 4 ] || fail "a run whose updates are all refused should still record its rounds"

echo "readme_walk: every command answered as the README says"
