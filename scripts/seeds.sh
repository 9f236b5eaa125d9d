#!/usr/bin/env bash
# The hospitals over seeds: the kept model's pooled test accuracy, the local-only mean and the
# centralised baseline for each seed, then their means (issue 16's goal is measured on seeds
# 1..10, which no tuning looked at). With --tune, instead the mean over seeds 101..110 of the
# best federated validation loss (what tuning may look at), for the flags given after it.
# Usage: scripts/seeds.sh [FIRST LAST]            e.g. scripts/seeds.sh 1 10   (about 1 min)
#        scripts/seeds.sh --tune [simulate flags]   e.g. scripts/seeds.sh --tune --hidden 32
source "$(dirname "$0")/common.sh"
flotilla_bins debug
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
if [ "${1:-}" = --tune ]; then
  shift
  for s in $(seq 101 110); do
    "$coord" simulate --scenario hospitals --seed "$s" --out "$w/$s" --quiet --insecure --no-baselines "$@" > /dev/null 2>&1
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "validation_loss") c = i; next } $c != "" && (m == "" || $c < m) { m = $c } END { print m }' "$w/$s/metrics.csv"
  done | awk -v flags="$*" '{ a += $1; n++ } END { printf "flags [%s]: mean best validation loss %.4f over %d seeds\n", flags, a / n, n }'
  exit 0
fi
first=${1:-1}; last=${2:-10}
echo "seed kept_round federated local_only_mean centralized"
for s in $(seq "$first" "$last"); do
  "$coord" simulate --scenario hospitals --seed "$s" --out "$w/$s" --quiet --insecure > /dev/null 2>&1
  python3 -c "
import json, sys
s = json.load(open(sys.argv[1])); b = s['baselines']
print(sys.argv[2], s['models']['model.safetensors']['round'], round(s['final']['accuracy'], 3), round(b['local_mean_accuracy'], 3), round(b['centralized']['accuracy'], 3))" "$w/$s/summary.json" "$s"
done | tee "$w/table"
awk 'NR > 0 { f += $3; l += $4; c += $5; if (min == "" || $3 < min) min = $3; n++ } END { printf "mean federated %.3f (min %.3f), local-only %.3f, centralized %.3f over %d seeds\n", f / n, min, l / n, c / n, n }' "$w/table"
