#!/usr/bin/env bash
# Heterogeneity experiment: German credit across 10 banks with a Dirichlet(0.1) label skew;
# FedProx, SCAFFOLD and FedYogi against FedAvg. Writes docs/HETEROGENEITY.md.
# Usage: scripts/heterogeneity.sh [ROUNDS] [SEED] [TARGET]
# (FLOTILLA_BIN_DIR and FLOTILLA_REPORT_DIR: see scripts/common.sh)
source "$(dirname "$0")/common.sh"
rounds="${1:-20}"; seed="${2:-42}"; target="${3:-0.72}"
flotilla_bins debug
out=$(mktemp -d)
common="--data data/germancredit.csv --config examples/banks.toml --clients 10 --partition dirichlet:0.1 --rounds $rounds --seed $seed"
source scripts/experiment-lib.sh
{
  echo "# Heterogeneity experiment"
  echo
  echo "German credit, 10 banks, Dirichlet(0.1) label skew, $rounds rounds, seed $seed; accuracy of the global"
  echo "model on the pooled test split (70% of it is the majority class). Command: \`scripts/heterogeneity.sh $rounds $seed $target\`."
  echo "Local training is Adam (lr 0.001, 5 epochs) except SCAFFOLD, whose control-variate update assumes SGD."
  echo
  header
  row "FedAvg" --strategy fedavg
  row "FedProx μ=0.1" --strategy fedprox --proximal-mu 0.1
  row "FedYogi η=0.01" --strategy fedyogi --server-lr 0.01
  row "SCAFFOLD (SGD lr 0.05)" --strategy scaffold --learning-rate 0.05
  row "FedAvg with SGD lr 0.05 (SCAFFOLD's control)" --strategy fedavg --learning-rate 0.05
} | tee "$(report_path docs HETEROGENEITY.md)"
rm -rf "$out"
