#!/usr/bin/env bash
# The accuracy cost of privacy. Table 1, the four hospitals at one seed: no protection, central
# DP at a few noise levels, local DP, secure aggregation, and secure aggregation with central DP.
# Table 2, the hospitals and the banks, mean of SEEDS seeds (default 5): record-level DP (DP-SGD
# at every site) at ε per record 1, 3, 8, next to client-level DP and no DP.
# Writes docs/PRIVACY.md. Usage: scripts/privacy.sh [ROUNDS] [SEED] [SEEDS]
# (FLOTILLA_BIN_DIR and FLOTILLA_REPORT_DIR: see scripts/common.sh)
source "$(dirname "$0")/common.sh"
rounds="${1:-20}"; seed="${2:-42}"; seeds="${3:-5}"
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
# One row of table 2: the mean over seeds 1..$seeds of the final accuracy and AUC.
mean_row() { # scenario, label, extra flags...
  local scenario="$1" label="$2"; shift 2
  local start end i
  start=$EPOCHREALTIME
  for i in $(seq 1 "$seeds"); do
    "$bin" --log error simulate --scenario "$scenario" --rounds "$rounds" --seed "$i" --no-baselines --quiet --insecure --out "$out/run$i" --force "$@" > /dev/null
  done
  end=$EPOCHREALTIME
  for i in $(seq 1 "$seeds"); do tail -1 "$out/run$i/metrics.csv"; echo; done | awk -F, -v header="$(head -1 "$out/run1/metrics.csv")" -v label="$label" -v flags="$*" \
    -v secs="$(awk -v a="$start" -v b="$end" -v n="$seeds" 'BEGIN { print (b - a) / n }')" '
    BEGIN { n = split(header, h, ","); for (i = 1; i <= n; i++) col[h[i]] = i }
    NF > 1 { k++; a[k] = $col["accuracy"]; u[k] = $col["auc"]; r = $col["record_epsilon"]; e = $col["epsilon"]
             if (r != "") { rs += r; rn++ } if (e != "") { es += e; en++ } }
    END {
      for (i = 1; i <= k; i++) { ma += a[i]; mu += u[i] } ma /= k; mu /= k
      for (i = 1; i <= k; i++) { va += (a[i] - ma)^2; vu += (u[i] - mu)^2 }
      printf "| %s | `%s` | %.3f ± %.3f | %.3f ± %.3f | %s | %s | %.1f |\n", label, flags, ma, sqrt(va / k), mu, sqrt(vu / k),
        (rn ? sprintf("%.2f", rs / rn) : "–"), (en ? sprintf("%.2f", es / en) : "–"), secs
    }'
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
  row "secure aggregation + distributed DP, z = 0.5" --secure-aggregation --dp-clip 1 --dp-noise 0.5 --dp-distributed
  echo
  echo "DP runs draw their noise from the OS (no participant can know it), so they differ from run to"
  echo "run; table 2 averages seeds for that reason."
  echo
  echo "## Record-level DP: what protecting each patient costs"
  echo
  echo "DP-SGD at every site (\`--dp-sgd-epsilon E\`: each site picks the smallest noise that keeps each of"
  echo "its records within ε over the run's $rounds rounds, with clip C = 1, δ = 1e-5, its own Poisson"
  echo "sampling at the task's batch size). Client-level DP is central DP-FedAvg (\`--dp-clip 1"
  echo "--dp-noise 1\`); its ε bounds what the model reveals about a whole site. Local learning rate"
  echo "0.003 for every row but the last (DP-SGD needs a larger step than the tasks' 0.001), $rounds"
  echo "rounds, mean of $seeds seeds (1..$seeds) ± the standard deviation over seeds; accuracy and AUC"
  echo "are the final model's example-weighted federated evaluation. Command: \`scripts/privacy.sh $rounds $seed $seeds\`."
  for scenario in hospitals banks; do
    echo
    echo "### $scenario"
    echo
    echo "| privacy | flags | accuracy | AUC | ε per record (largest site) | ε client-level | wall s per run |"
    echo "|---|---|---|---|---|---|---|"
    mean_row "$scenario" "record-level DP, ε = 1" --learning-rate 0.003 --dp-sgd-epsilon 1
    mean_row "$scenario" "record-level DP, ε = 3" --learning-rate 0.003 --dp-sgd-epsilon 3
    mean_row "$scenario" "record-level DP, ε = 8" --learning-rate 0.003 --dp-sgd-epsilon 8
    mean_row "$scenario" "no DP (ε = ∞)" --learning-rate 0.003
    mean_row "$scenario" "client-level DP, z = 1" --learning-rate 0.003 --dp-clip 1 --dp-noise 1
    mean_row "$scenario" "no DP, the task's learning rate" 
  done
} | tee "$(report_path docs PRIVACY.md)"
rm -rf "$out"
