# Sourced by the scripts in scripts/: where the binaries come from and where reports go.
#
#   FLOTILLA_BIN_DIR=DIR     use flotilla-coordinator and flotilla-client from DIR (an existing
#                            build; nothing is built). Default: build this checkout with cargo.
#   FLOTILLA_REPORT_DIR=DIR  write the report (docs/*.md, BENCHMARKS.md) into DIR instead of the
#                            checkout, which may then be read-only.
#
# Relative paths are taken from where the script was started; the script then works from the
# repository root (it reads data/ and examples/ there).
set -euo pipefail
if [ -n "${FLOTILLA_BIN_DIR:-}" ]; then
  FLOTILLA_BIN_DIR=$(cd "$FLOTILLA_BIN_DIR" && pwd)
fi
if [ -n "${FLOTILLA_REPORT_DIR:-}" ]; then
  mkdir -p "$FLOTILLA_REPORT_DIR"
  FLOTILLA_REPORT_DIR=$(cd "$FLOTILLA_REPORT_DIR" && pwd)
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Sets $coord and $client (and $bin, the coordinator, for the experiment scripts): from
# $FLOTILLA_BIN_DIR, or built here in the given profile (debug or release).
flotilla_bins() { # profile
  local dir
  if [ -n "${FLOTILLA_BIN_DIR:-}" ]; then
    dir=$FLOTILLA_BIN_DIR
  elif [ "$1" = release ]; then
    cargo build --release --locked -p flotilla-coordinator -p flotilla-client >&2
    dir=${CARGO_TARGET_DIR:-target}/release
  else
    cargo build --locked -p flotilla-coordinator -p flotilla-client >&2
    dir=${CARGO_TARGET_DIR:-target}/debug
  fi
  coord="$dir/flotilla-coordinator"; client="$dir/flotilla-client"; bin=$coord
  for b in "$coord" "$client"; do
    [ -x "$b" ] || { echo "$0: no executable $b (FLOTILLA_BIN_DIR=${FLOTILLA_BIN_DIR:-unset})" >&2; exit 1; }
  done
}

# The path a report named $2 goes to: $FLOTILLA_REPORT_DIR/$2, or $1/$2 in the checkout.
report_path() { # default folder in the checkout, file name
  echo "${FLOTILLA_REPORT_DIR:-$1}/$2"
}
