#!/usr/bin/env bash
# Poisoning experiment: German credit split IID across 10 banks, 2 of them malicious
# (they send their delta sign-flipped and scaled x10). Writes docs/POISONING.md.
# Usage: scripts/poisoning.sh [ROUNDS] [SEED]
# (FLOTILLA_BIN_DIR and FLOTILLA_REPORT_DIR: see scripts/common.sh)
source "$(dirname "$0")/common.sh"
rounds="${1:-10}"
seed="${2:-42}"
flotilla_bins debug
out=$(mktemp -d)
run() { # label, extra flags...
  local label="$1"; shift
  local acc
  acc=$("$bin" --log error simulate --data data/germancredit.csv --config examples/banks.toml --clients 10 --partition iid \
        --rounds "$rounds" --seed "$seed" --no-baselines --quiet --insecure --out "$out/run" --force "$@" \
        | sed -n 's/^final global model: accuracy \([0-9.]*\).*/\1/p')
  echo "| $label | $* | $acc |"
}
{
  echo "# Poisoning experiment"
  echo
  echo "German credit, 10 banks (IID split), $rounds rounds, seed $seed; malicious banks send \`-10 x delta\`."
  echo "Accuracy of the final global model on the pooled test split. Command: \`scripts/poisoning.sh $rounds $seed\`."
  echo
  echo "| run | flags | accuracy |"
  echo "|---|---|---|"
  run "FedAvg, no attack" --strategy fedavg
  run "FedAvg, 2 malicious" --strategy fedavg --malicious 2
  run "median, 2 malicious" --strategy median --malicious 2
  run "trimmed mean β=0.2, 2 malicious" --strategy trimmed-mean --trim-fraction 0.2 --malicious 2
  run "Krum f=2, 2 malicious" --strategy krum --byzantine 2 --malicious 2
  run "Multi-Krum f=2, 2 malicious" --strategy multi-krum --byzantine 2 --malicious 2
  run "Bulyan f=1, 2 malicious (f=2 needs 11 banks)" --strategy bulyan --byzantine 1 --malicious 2
} | tee "$(report_path docs POISONING.md)"
rm -rf "$out"
