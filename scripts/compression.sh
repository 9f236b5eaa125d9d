#!/usr/bin/env bash
# Compression measured (issue 18): the hospitals federate with each update codec on the same
# seeds; for each, the bytes one site uploads and downloads per round (as the coordinator
# counted them, `summary.json`'s `transfer`; downloads are deltas from the model the site
# holds) and the kept model's pooled test accuracy, beside f32. Then W2 (6.85 M parameters,
# synthetic data that every codec learns perfectly, so its loss is compared) with f32, int8
# and top-k. Writes docs/COMPRESSION.md (the tables) and docs/compression.html +
# docs/compression.bytes.svg (accuracy against cumulative upload bytes).
# Then the MNIST 2NN (the FedAvg paper's IID setting: 100 sites, C = 0.1, E = 1, B = 10, SGD
# at 0.1): bytes and the rounds to 97% held-out accuracy per codec.
# Usage: scripts/compression.sh [SEEDS] [ROUNDS] [W2_ROUNDS] [MNIST_ROUNDS]
#   e.g. scripts/compression.sh 3 20 5 60  (about 2 min for the hospitals, 6 for W2, 5 for MNIST
#   with release binaries; W2_ROUNDS=0 or MNIST_ROUNDS=0 skips that part)
source "$(dirname "$0")/common.sh"
flotilla_bins debug
seeds=${1:-3}; rounds=${2:-20}; w2_rounds=${3:-5}; mnist_rounds=${4:-60}
out=${FLOTILLA_REPORT_DIR:-docs}
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
codecs="f32 fp16 bf16 int8 topk:0.05 topk:0.02 topk8:0.05 topk8:0.02"
for c in $codecs; do
  for s in $(seq 1 "$seeds"); do
    "$coord" simulate --scenario hospitals --seed "$s" --rounds "$rounds" --compress "$c" --out "$w/${c/:/-}-$s" --quiet --insecure --no-baselines > /dev/null 2>&1 \
      || { echo "compression: $c seed $s failed" >&2; exit 1; }
  done
done
python3 - "$w" "$seeds" "$codecs" > "$w/table.md" <<'PY'
import json, sys
w, seeds, codecs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
rows = []
for c in codecs:
    acc, up, down = [], [], []
    for s in range(1, seeds + 1):
        m = json.load(open(f"{w}/{c.replace(':', '-')}-{s}/summary.json"))
        kept = m["models"]["model.safetensors"]["round"]
        acc.append(next(h["accuracy"] for h in m["history"] if h["round"] == kept))
        t = m["transfer"]
        up.append(t["update_bytes"] / len(m["sites"]) / m["rounds"])
        full = t["download_bytes"] + t["download_bytes_saved_by_deltas"]
        down.append((t["download_bytes"] / len(m["sites"]) / (m["rounds"] + 1), full / t["download_bytes"]))
    rows.append((c, sum(up) / seeds, sum(acc) / seeds, min(acc), sum(d for d, _ in down) / seeds, sum(r for _, r in down) / seeds))
base_bytes, base_acc = rows[0][1], rows[0][2]
print("| codec | upload bytes per site and round | fewer bytes than f32 | accuracy (mean) | change | min | download bytes per site and round (deltas) | fewer bytes than full models |")
print("|---|---|---|---|---|---|---|---|")
for c, b, a, lo, d, r in rows:
    print(f"| `{c}` | {b:,.0f} | {base_bytes / b:.1f}× | {a:.3f} | {a - base_acc:+.3f} | {lo:.3f} | {d:,.0f} | {r:.2f}× |")
PY
w2_codecs="f32 int8 topk:0.02 topk8:0.02"
if [ "$w2_rounds" -gt 0 ]; then
  for c in $w2_codecs; do
    "$coord" --log error simulate --synthetic --clients 10 --samples 200 --features 784 --max-columns 1024 --hidden 2048,2048,512 --seed 1 --rounds "$w2_rounds" \
      --compress "$c" --out "$w/w2-${c/:/-}" --quiet --insecure --no-baselines --lease 60 > /dev/null 2>&1 \
      || { echo "compression: W2 $c failed" >&2; exit 1; }
  done
  python3 - "$w" "$w2_codecs" > "$w/w2.md" <<'PY'
import csv, json, sys
w, codecs = sys.argv[1], sys.argv[2].split()
print("| codec | upload bytes per site and round | fewer bytes than f32 | download bytes per site and round (deltas) | fewer bytes than full models | test loss, last round | accuracy |")
print("|---|---|---|---|---|---|---|")
base = None
for c in codecs:
    d = f"{w}/w2-{c.replace(':', '-')}"
    m = json.load(open(f"{d}/summary.json"))
    t = m["transfer"]
    sites, rounds = len(m["sites"]), m["rounds"]
    up = t["update_bytes"] / sites / rounds
    base = base or up
    down = t["download_bytes"] / sites / (rounds + 1)
    full = (t["download_bytes"] + t["download_bytes_saved_by_deltas"]) / t["download_bytes"]
    last = list(csv.DictReader(open(f"{d}/metrics.csv")))[-1]
    print(f"| `{c}` | {up:,.0f} | {base / up:.1f}× | {down:,.0f} | {full:.2f}× | {float(last['loss']):.2e} | {float(last['accuracy']):.3f} |")
PY
fi
mnist_codecs="f32 int8 topk:0.05 topk:0.02 topk8:0.05 topk8:0.1"
if [ "$mnist_rounds" -gt 0 ]; then
  for c in $mnist_codecs; do
    "$coord" --log error simulate --scenario mnist --fraction-fit 0.1 --learning-rate 0.1 --seed 1 --rounds "$mnist_rounds" \
      --compress "$c" --out "$w/mnist-${c/:/-}" --quiet --insecure --no-baselines > /dev/null 2>&1 \
      || { echo "compression: MNIST $c failed" >&2; exit 1; }
  done
  python3 - "$w" "$mnist_codecs" > "$w/mnist.md" <<'PY'
import csv, json, sys
w, codecs = sys.argv[1], sys.argv[2].split()
print("| codec | upload bytes per update | fewer bytes than f32 | download bytes per site and round (deltas) | fewer bytes than full models | rounds to 97% | against f32 | held-out accuracy, last round |")
print("|---|---|---|---|---|---|---|---|")
base = None
for c in codecs:
    d = f"{w}/mnist-{c.replace(':', '-')}"
    m = json.load(open(f"{d}/summary.json"))
    t = m["transfer"]
    updates = sum(h["clients"] for h in m["history"] if h["round"] > 0)
    up = t["update_bytes"] / updates
    down = t["download_bytes"] / len(m["sites"]) / (m["rounds"] + 1)
    full = (t["download_bytes"] + t["download_bytes_saved_by_deltas"]) / t["download_bytes"]
    curve = [(int(r["round"]), float(r["accuracy"])) for r in csv.DictReader(open(f"{d}/holdout.csv"))]
    hit = next((r for r, a in curve if a >= 0.97), None)
    base = base or (up, hit)
    ratio = f"{hit / base[1]:.2f}×" if hit and base[1] else "—"
    print(f"| `{c}` | {up:,.0f} | {base[0] / up:.1f}× | {down:,.0f} | {full:.2f}× | {hit or 'not in ' + str(curve[-1][0])} | {ratio} | {curve[-1][1]:.4f} |")
PY
fi
mkdir -p "$out"
"$coord" report $(for c in $codecs; do echo "$w/${c/:/-}-1"; done) --out "$out/compression.html" > /dev/null
{
  echo "# Update compression: bytes against accuracy"
  echo
  echo "\`scripts/compression.sh $seeds $rounds\` on $(date -u +%Y-%m-%d): the four hospitals, $rounds rounds, seeds 1..$seeds, each codec"
  echo "on the same seeds (accuracy: the kept model on the pooled test split; bytes: the updates as the"
  echo "coordinator received them, over every site and round). The seed MLP has about 4,100 parameters"
  echo "(the input width follows the categories each seed's split keeps), so f32 is about 16 kB a round;"
  echo "int8 adds a 4-byte scale per 256 values, top-k sends 8 bytes (index and value) per kept value and topk8 about 2 (a varint gap and an int8 value),"
  echo "with error feedback at the site."
  echo
  cat "$w/table.md"
  echo
  echo "![accuracy against cumulative upload bytes, seed 1](compression.bytes.svg)"
  echo
  echo "Issue 18's goals on this model: \`topk\` with error feedback at least 20× fewer upload bytes for at"
  echo "most 1 point of accuracy, \`int8\` at least 3.5× at no measurable loss."
  echo
  echo "Downloads: a site that holds the previous global model (every site that trained or evaluated in"
  echo "the last round) receives the next one as the integer difference of the f32 bit patterns, in byte"
  echo "planes, compressed with zstd, and checks it against the model's hash. Only the first download of"
  echo "each site is a full model. Lossless float deltas save a share, not a factor: the low mantissa"
  echo "bytes of a weight that moved are noise."
  if [ -s "$w/w2.md" ]; then
    echo
    echo "## W2: 6.85 M parameters"
    echo
    echo "10 synthetic sites × 200 rows × 784 features, MLP 784-2048-2048-512-1, $w2_rounds rounds, seed 1. Every codec"
    echo "reaches accuracy 1.000 on this data, so the test loss of the last round is what compares them."
    echo
    cat "$w/w2.md"
  fi
  if [ -s "$w/mnist.md" ]; then
    echo
    echo "## MNIST 2NN: 199,210 parameters"
    echo
    echo "The FedAvg paper's IID setting (100 sites of 600 images, C = 0.1, E = 1, B = 10, SGD at 0.1), $mnist_rounds rounds,"
    echo "seed 1; each round's global model scored on MNIST's 10,000 test images. Issue 18's goal in rounds: \`topk\` at"
    echo "most 1.2× the rounds to the target, \`int8\` no measurable loss. Uploads are per update (10 a round);"
    echo "every one of the 100 sites downloads each round's model to evaluate it."
    echo
    cat "$w/mnist.md"
  fi
} > "$out/COMPRESSION.md"
echo "wrote $out/COMPRESSION.md, $out/compression.html and $out/compression.bytes.svg"
