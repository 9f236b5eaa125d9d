# Shared by the experiment scripts: runs one simulation and prints a Markdown table row.
# Needs $bin (from flotilla_bins in scripts/common.sh), $out, $target and the simulation flags
# common to the experiment in $common.
row() { # label, extra flags...
  local label="$1"; shift
  "$bin" --log error simulate $common --no-baselines --quiet --insecure --out "$out/run" --force "$@" > /dev/null
  awk -F, -v label="$label" -v flags="$*" -v target="$target" '
    NR > 1 { acc[$1] = $2; last = $1; if (first == "" && $2 + 0 >= target) first = $1; if ($2 + 0 > best) best = $2 + 0; clients += $5; rounds += ($1 > 0) }
    END { printf "| %s | `%s` | %s | %.3f | %.3f | %.1f |\n", label, flags, (first == "" ? "not reached" : first), best, acc[last], clients / (rounds ? rounds : 1) }
  ' "$out/run/metrics.csv"
}
header() {
  echo "| run | flags | first round with accuracy >= $target | best accuracy | final accuracy | updates used per round |"
  echo "|---|---|---|---|---|---|"
}
