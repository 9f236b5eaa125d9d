#!/usr/bin/env bash
# Straggler experiment in the style of FedProx: 50% and 90% of the banks complete only one of
# the five local epochs asked. FedAvg drops their partial work; FedProx uses it.
# Writes docs/STRAGGLERS.md. Usage: scripts/stragglers.sh [ROUNDS] [SEED] [TARGET]
# (FLOTILLA_BIN_DIR and FLOTILLA_REPORT_DIR: see scripts/common.sh)
source "$(dirname "$0")/common.sh"
rounds="${1:-20}"; seed="${2:-42}"; target="${3:-0.70}"
flotilla_bins debug
out=$(mktemp -d)
common="--data data/germancredit.csv --config examples/banks.toml --clients 10 --partition dirichlet:0.5 --rounds $rounds --seed $seed"
source scripts/experiment-lib.sh
{
  echo "# Straggler experiment"
  echo
  echo "German credit, 10 banks, Dirichlet(0.5), $rounds rounds, seed $seed; stragglers do 1 of 5 local epochs."
  echo "Command: \`scripts/stragglers.sh $rounds $seed $target\`."
  echo
  header
  row "FedAvg, no stragglers" --strategy fedavg
  row "FedAvg, 50% stragglers" --strategy fedavg --stragglers 0.5
  row "FedProx μ=0.1, 50% stragglers" --strategy fedprox --proximal-mu 0.1 --stragglers 0.5
  row "FedAvg, 90% stragglers" --strategy fedavg --stragglers 0.9
  row "FedProx μ=0.1, 90% stragglers" --strategy fedprox --proximal-mu 0.1 --stragglers 0.9
} | tee "$(report_path docs STRAGGLERS.md)"
rm -rf "$out"
