#!/usr/bin/env bash
# The accuracy cost of privacy on the four hospitals: no protection, central DP at a few noise
# levels, local DP, secure aggregation, and secure aggregation with central DP.
# Writes docs/PRIVACY.md. Usage: scripts/privacy.sh [ROUNDS] [SEED]
# (FLOTILLA_BIN_DIR and FLOTILLA_REPORT_DIR: see scripts/common.sh)
source "$(dirname "$0")/common.sh"
rounds="${1:-20}"; seed="${2:-42}"
flotilla_bins debug
out=$(mktemp -d)
row() { # label, extra flags...
  local label="$1"; shift
  local start end
  start=$EPOCHREALTIME
  "$bin" --log error simulate --scenario hospitals --rounds "$rounds" --seed "$seed" --no-baselines --quiet --insecure --out "$out/run" --force "$@" > /dev/null
  end=$EPOCHREALTIME
  awk -F, -v label="$label" -v flags="$*" -v secs="$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i }
    NR > 1 { acc = $col["accuracy"]; auc = $col["auc"]; eps = $col["epsilon"]; if (acc + 0 > best) best = acc + 0 }
    END { printf "| %s | `%s` | %.3f | %.3f | %.3f | %s | %.1f |\n", label, flags, acc, best, auc, (eps == "" ? "–" : sprintf("%.2f", eps)), secs }
  ' "$out/run/metrics.csv"
}
{
  echo "# Privacy: what it costs in accuracy"
  echo
  echo "Four hospitals (UCI Heart Disease), FedAvg, $rounds rounds, seed $seed, δ = 1e-5; accuracy is the"
  echo "example-weighted federated evaluation on the sites' test splits after the last round."
  echo "Command: \`scripts/privacy.sh $rounds $seed\`."
  echo
  echo "| run | flags | final accuracy | best accuracy | final AUC | ε | wall s |"
  echo "|---|---|---|---|---|---|---|"
  row "no protection"
  row "central DP, z = 0.3" --dp-clip 1 --dp-noise 0.3
  row "central DP, z = 0.5" --dp-clip 1 --dp-noise 0.5
  row "central DP, z = 1.0" --dp-clip 1 --dp-noise 1.0
  row "central DP, adaptive clip, z = 0.3" --dp-clip 0.1 --dp-noise 0.3 --dp-adaptive-quantile 0.5
  row "local DP, z = 0.5" --dp-clip 1 --dp-noise 0.5 --dp-local
  row "secure aggregation" --secure-aggregation
  row "secure aggregation + central DP, z = 0.5" --secure-aggregation --dp-clip 1 --dp-noise 0.5
} | tee "$(report_path docs PRIVACY.md)"
rm -rf "$out"
