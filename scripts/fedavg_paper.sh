#!/usr/bin/env bash
# The FedAvg paper's MNIST table (McMahan et al., AISTATS 2017), reproduced (issue 17).
# 100 sites of 600 training images (IID, or the paper's pathological non-IID split: 200
# label-sorted shards of 300, two per site); a fraction C = 0.1 of them trains each round;
# MNIST's 10,000 test images score every round's global model at the coordinator
# (holdout.csv). For each cell: the learning rate is chosen by short pilots on a grid (the
# paper also took the best of its grid), then one full run stops when the held-out accuracy
# first reaches the target; its round count goes beside the paper's.
# Writes docs/FEDAVG_PAPER.md and docs/fedavg_paper.svg (held-out accuracy per round).
#
# Usage: scripts/fedavg_paper.sh [CELL...]   (default: 2nn-iid 2nn-noniid cnn-iid throughput)
#   throughput: the CNN's local training, images/s on one core (taskset -c 0), on both burn
#                backends and in PyTorch's eager loop (scripts/cnn_throughput.py) when
#                FEDAVG_PYTHON (default python3) can import torch
#   FEDAVG_PYTHON=PATH     the Python with PyTorch (e.g. a venv: pip install torch)
#   FEDAVG_PILOT_ROUNDS=R  rounds of each pilot (default 5)
#   FEDAVG_MAX_ROUNDS=N    cap on every full run (default: each cell's own, 1.5× to 3.5× the paper's)
#   FEDAVG_SMOKE=1         the script's path in minutes: tiny cells, nothing written to docs/ (not in CI:
#                          the CNN still scores 10,000 test images a round)
# Resumable cell by cell: docs/fedavg_paper/<cell>/result.json marks a finished cell (delete it
# to rerun); a pilot that finished (in runs/fedavg_paper/<cell>/, or FEDAVG_RUNS) is not run again. The CNN is slow on CPU:
# about 2 TFLOP a round at E = 5; budget hours for it, or run its cell on its own.
source "$(dirname "$0")/common.sh"
flotilla_bins release
pilot_rounds=${FEDAVG_PILOT_ROUNDS:-5}
smoke=${FEDAVG_SMOKE:-0}
if [ "$smoke" = 1 ]; then
  results=$(mktemp -d); trap 'rm -rf "$results"' EXIT
  report=$results; runs=$results
else
  report=${FLOTILLA_REPORT_DIR:-docs}
  results=$report/fedavg_paper
  # The run directories (models, metrics, logs) stay out of the checkout's docs.
  runs=${FEDAVG_RUNS:-runs/fedavg_paper}
fi
mkdir -p "$results" "$runs"
cells=${*:-2nn-iid 2nn-noniid cnn-iid throughput}

# The CNN's throughput, ours beside PyTorch's, pinned to one core.
if [[ " $cells " == *" throughput "* ]] && [ "$smoke" != 1 ] && [ ! -f "$results/throughput/result.json" ]; then
  mkdir -p "$results/throughput"
  py=${FEDAVG_PYTHON:-python3}
  echo "throughput: the paper's CNN, one local epoch of B = 10 on one core" >&2
  {
    # burn-ndarray's convolutions are slow: fewer images keep it to a minute.
    taskset -c 0 cargo bench --locked -q -p flotilla-common --bench cnn_throughput -- 600 flex 2> /dev/null
    taskset -c 0 cargo bench --locked -q -p flotilla-common --bench cnn_throughput -- 60 ndarray 2> /dev/null
    if "$py" -c "import torch" 2> /dev/null; then taskset -c 0 "$py" scripts/cnn_throughput.py 600; fi
  } | grep '^{' > "$results/throughput/runs.jsonl"
  python3 - "$results/throughput" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" <<'PY'
import json, sys
d, cpu = sys.argv[1:]
runs = [json.loads(l) for l in open(f"{d}/runs.jsonl")]
json.dump({"cpu": cpu, "runs": runs}, open(f"{d}/result.json", "w"), indent=1)
PY
fi
cells=${cells// throughput/}; cells=${cells//throughput /}; [ "$cells" = throughput ] && cells=""

# name: scenario partition E B target paper-rounds max-rounds learning-rate-grid
cell_spec() {
  case $1 in
    2nn-iid)    echo "mnist iid 1 10 0.97 87 300 0.05 0.1 0.2" ;;
    2nn-noniid) echo "mnist shards:2 1 10 0.97 664 1000 0.05 0.1 0.2" ;;
    # One learning rate, no pilot (pilots at E = 5 cost as much as the run): the 2NN's 0.1
    # made a site's training diverge (NaN) in round 9 of a first attempt, so half of it.
    cnn-iid)    echo "mnist-cnn iid 5 10 0.99 20 40 0.05" ;;
    *) echo "fedavg_paper: unknown cell $1 (2nn-iid, 2nn-noniid, cnn-iid)" >&2; exit 1 ;;
  esac
}

# Runs one federation into $1 with learning rate $2 for at most $3 rounds; with a target $4,
# stops it once holdout.csv reaches that accuracy (the rounds after it do not change the
# answer). B is the task's (10, examples/mnist_*.toml). Extra arguments go to `simulate`.
run_cell() { # dir lr rounds target scenario partition E B [smoke args]
  local dir=$1 lr=$2 rounds=$3 target=$4 scenario=$5 partition=$6 epochs=$7 batch=$8; shift 8
  rm -rf "$dir"
  # burn-ndarray's convolutions are an order of magnitude slower than burn-flex's (README).
  local backend=ndarray; [ "$scenario" = mnist-cnn ] && backend=flex
  "$coord" --log error simulate --scenario "$scenario" --partition "$partition" "$@" --fraction-fit 0.1 --backend "$backend" \
    --rounds "$rounds" --learning-rate "$lr" --local-epochs "$epochs" --seed 1 \
    --out "$dir" --quiet --insecure --no-baselines --lease 600 > "$dir.log" 2>&1 &
  local pid=$! start=$SECONDS stopped=0
  while kill -0 "$pid" 2> /dev/null; do
    if [ "$target" != none ] && [ -f "$dir/holdout.csv" ] && awk -F, -v t="$target" 'NR > 1 && $3 >= t { hit = 1 } END { exit !hit }' "$dir/holdout.csv"; then
      kill "$pid" 2> /dev/null || true
      stopped=1
      break
    fi
    sleep 1
  done
  # A run we stopped at its target exits by our signal; any other failure (a site whose
  # training diverged, say) is no result and must not be recorded as "target not reached".
  wait "$pid" 2> /dev/null || [ "$stopped" = 1 ] || { echo "fedavg_paper: the run in $dir failed:" >&2; tail -5 "$dir.log" >&2; exit 1; }
  echo $((SECONDS - start)) > "$dir.seconds"
}

for cell in $cells; do
  read -r scenario partition epochs batch target paper max grid <<< "$(cell_spec "$cell")"
  max=${FEDAVG_MAX_ROUNDS:-$max}
  extra=()
  if [ "$smoke" = 1 ]; then
    # A few sites of a few images and two rounds: the script's path, not the paper's numbers.
    extra=(--clients 10 --samples 200); max=2; grid="0.1"; pilot_rounds=1
  fi
  dir=$runs/$cell
  [ -f "$results/$cell/result.json" ] && { echo "$cell: done (delete $results/$cell/result.json to rerun)"; continue; }
  mkdir -p "$dir" "$results/$cell"
  best_lr=""; best_acc=-1; note=""
  if [ "$smoke" != 1 ] && [ "$(wc -w <<< "$grid")" = 1 ]; then
    note="one learning rate, no pilot"
    best_lr=$grid; grid=""
  fi
  for lr in $grid; do
    pilot=$dir/pilot-lr$lr
    if [ ! -f "$pilot/summary.json" ]; then
      echo "$cell: pilot, learning rate $lr, $pilot_rounds rounds" >&2
      run_cell "$pilot" "$lr" "$pilot_rounds" none "$scenario" "$partition" "$epochs" "$batch" "${extra[@]}"
    fi
    acc=$(tail -1 "$pilot/holdout.csv" | cut -d, -f3)
    if awk -v a="$acc" -v b="$best_acc" 'BEGIN { exit !(a > b) }'; then best_lr=$lr; best_acc=$acc; fi
  done
  echo "$cell: learning rate $best_lr (pilot accuracy $best_acc); full run up to $max rounds" >&2
  run_cell "$dir/run" "$best_lr" "$max" "$target" "$scenario" "$partition" "$epochs" "$batch" "${extra[@]}"
  python3 - "$dir" "$results/$cell" "$cell" "$best_lr" "$target" "$paper" "$max" "$pilot_rounds" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$note" <<'PY'
import csv, json, sys
d, out, cell, lr, target, paper, cap, pilot, cores, cpu, note = sys.argv[1:]
rows = list(csv.DictReader(open(f"{d}/run/holdout.csv")))
curve = [(int(r["round"]), float(r["accuracy"])) for r in rows]
hit = next((r for r, a in curve if a >= float(target)), None)
pilots = {}
for p in __import__("glob").glob(f"{d}/pilot-lr*/holdout.csv"):
    last = list(csv.DictReader(open(p)))[-1]
    pilots[p.split("pilot-lr")[1].split("/")[0]] = float(last["accuracy"])
json.dump({"cell": cell, "learning_rate": float(lr), "target": float(target), "paper_rounds": int(paper), "rounds_to_target": hit,
           "max_rounds": int(cap), "rounds_run": curve[-1][0] if curve else 0, "best_accuracy": max((a for _, a in curve), default=0),
           "seconds": int(open(f"{d}/run.seconds").read()), "pilot_rounds": int(pilot), "pilot_accuracy": pilots,
           "cores": int(cores), "cpu": cpu, "curve": curve, **({"lr_note": note} if note else {})}, open(f"{out}/result.json", "w"), indent=1)
PY
  echo "$cell: $(python3 -c "import json,sys; r=json.load(open('$results/$cell/result.json')); print(f\"{r['rounds_to_target']} rounds to {r['target']} (paper {r['paper_rounds']}), {r['seconds']} s\")")"
done

python3 - "$results" "$report" "$smoke" "$pilot_rounds" <<'PY'
import glob, json, os, sys
results, report, smoke, pilot = sys.argv[1:]
cells = {os.path.basename(os.path.dirname(p)): json.load(open(p)) for p in glob.glob(f"{results}/*/result.json")}
throughput = cells.pop("throughput", None)
order = [c for c in ["2nn-iid", "2nn-noniid", "cnn-iid"] if c in cells] + sorted(c for c in cells if c not in ["2nn-iid", "2nn-noniid", "cnn-iid"])
what = {"2nn-iid": ("2NN", "IID", 1), "2nn-noniid": ("2NN", "pathological non-IID", 1), "cnn-iid": ("CNN", "IID", 5)}
paper_note = {"cnn-iid": "20 (Table 2; Table 1's neighbouring setting: 18)"}
colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
# The picture: held-out accuracy per round, one line per cell, the targets dashed.
W, H, L, B = 720, 400, 60, 40
rmax = max((r["curve"][-1][0] for r in cells.values() if r["curve"]), default=1) or 1
y = lambda a: H - B - (max(a, 0.8) - 0.8) / 0.2 * (H - B - 20)
x = lambda r: L + r / rmax * (W - L - 20)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="14" text-anchor="middle">MNIST, held-out accuracy of the global model per round (FedAvg, C = 0.1)</text>']
for t in [0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0]:
    svg.append(f'<line x1="{L}" x2="{W-20}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/><text x="{L-6}" y="{y(t)+4:.1f}" text-anchor="end">{t:.2f}</text>')
svg.append(f'<text x="{W/2}" y="{H-8}" text-anchor="middle">round (of {rmax})</text>')
for i, c in enumerate(order):
    r, col = cells[c], colours[i % len(colours)]
    pts = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in r["curve"])
    svg.append(f'<polyline fill="none" stroke="{col}" stroke-width="1.5" points="{pts}"/>')
    svg.append(f'<line x1="{L}" x2="{W-20}" y1="{y(r["target"]):.1f}" y2="{y(r["target"]):.1f}" stroke="{col}" stroke-dasharray="4 3"/>')
    svg.append(f'<text x="{W-24}" y="{22 + 14*i}" text-anchor="end" fill="{col}">{c}: lr {r["learning_rate"]}, {r["rounds_to_target"] or "not"} rounds to {r["target"]:.2f}</text>')
svg.append("</svg>")
open(f"{report}/fedavg_paper.svg", "w").write("\n".join(svg))
if smoke == "1":
    assert all(r["curve"] for r in cells.values()), "every smoke cell has a curve"
    print(f"fedavg_paper smoke: {len(cells)} cells ran")
    sys.exit(0)
# Cells are resumable, so they may have run on different machines: say which ran where.
hosts = {}
for c in order:
    hosts.setdefault(f"{cells[c].get('cores', '?')} cores of {cells[c].get('cpu', '?')}", []).append(c)
machines = "; ".join(h + (f" ({', '.join(cs)})" if len(hosts) > 1 else "") for h, cs in hosts.items()) or "?"
out = ["# The FedAvg paper's MNIST table, reproduced", "",
       "McMahan et al., *Communication-Efficient Learning of Deep Networks from Decentralized Data* (AISTATS 2017),",
       "Table 1 and 2: rounds of FedAvg until the global model first reaches a target accuracy on MNIST's 10,000",
       "test images. As in the paper: 100 sites of 600 training images (IID, or sorted by label into 200 shards",
       "of 300 and two shards dealt to each site), a fraction C = 0.1 of the sites trains each round, E local",
       "epochs of plain SGD with batch B, the learning rate the best of a small grid. Here each site keeps 5% of",
       "its images for its own test report, so it trains on 570. The coordinator scores every round's global",
       "model on the test images (`holdout.csv`).", "",
       "`scripts/fedavg_paper.sh` (release build), seed 1, on " + machines + ".",
       f"Learning rates: {pilot}-round pilots on each grid; the one with the best held-out accuracy after the pilot runs in full.", "",
       "| model | data | E | B | target | paper's rounds | our rounds | within 1.5× | learning rate (pilot accuracies) | best accuracy | rounds run | wall time |",
       "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for c in order:
    r = cells[c]
    m, data, e = what.get(c, (c, "", "?"))
    ours = r["rounds_to_target"]
    within = "yes" if ours and ours <= 1.5 * r["paper_rounds"] else "no"
    pilots = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(r["pilot_accuracy"].items(), key=lambda kv: float(kv[0]))) or r.get("lr_note", "")
    out.append(f"| {m} | {data} | {e} | 10 | {r['target']:.2f} | {paper_note.get(c, r['paper_rounds'])} | {ours or 'not reached in ' + str(r['max_rounds'])} | {within} | {r['learning_rate']} ({pilots}) | {r['best_accuracy']:.4f} | {r['rounds_run']} | {r['seconds']} s{' (' + r['note'] + ')' if r.get('note') else ''} |")
out += ["", "![held-out accuracy per round](fedavg_paper.svg)", "",
        "Reading it:",
        "- *Our rounds* is the first round whose global model reaches the target on the 10,000 test images; the run",
        "  stops there (*rounds run*). *Within 1.5×* is issue 17's goal against the paper's figure.",
        "- Each site standardises every value with the federation's mean and deviation of MNIST's pixels (from the",
        "  sites' aggregates, see the README); the paper does not describe its preprocessing. Standardised inputs",
        "  are one reason to need fewer rounds than the paper where we do; the learning-rate grid is another (the",
        "  paper's was finer, but it chose per cell as we do).",
        "- A site keeps 5% of its 600 images for its own test report and trains on 570 (57 steps of B = 10 an",
        "  epoch, against the paper's 60).",
        "- Wall time is the full run only (the pilots are extra), in a release build of the in-process simulation,",
        "  the 10,000-image evaluation of every round included."]
if "cnn-iid" in cells:
    out += ["- The CNN's cell runs one learning rate, 0.05, without pilots (a pilot at E = 5 costs as much as the",
            "  run): a first attempt at the 2NN's 0.1 reached 0.984 in 8 rounds, then one site's training diverged",
            "  (NaN) in round 9. The paper's CNN figures use learning rates tuned per cell on a finer grid."]
out += [""]
if throughput:
    out += ["## The CNN's training speed", "",
            f"One local epoch of the paper's CNN at B = 10 (SGD), pinned to one core of {throughput['cpu']} (`taskset -c 0`;",
            "`cargo bench -p flotilla-common --bench cnn_throughput`, and `scripts/cnn_throughput.py` for PyTorch's eager loop",
            "on the same model; release build, one warm-up epoch of 20 images first).", "",
            "| implementation | images | seconds | images/s |", "|---|---|---|---|"]
    out += [f"| {r['backend']} | {r['images']} | {r['seconds']} | {r['images_per_s']} |" for r in throughput["runs"]]
    if not any(r["backend"].startswith("pytorch") for r in throughput["runs"]):
        out += ["", "PyTorch was not importable in this run (set FEDAVG_PYTHON to a Python with torch)."]
    out += [""]
missing = [c for c in ["2nn-iid", "2nn-noniid", "cnn-iid"] if c not in cells]
if missing:
    out += [f"Not yet run: {', '.join(missing)} (`scripts/fedavg_paper.sh {' '.join(missing)}`).", ""]
open(f"{report}/FEDAVG_PAPER.md", "w").write("\n".join(out) + "\n")
print(f"wrote {report}/FEDAVG_PAPER.md and {report}/fedavg_paper.svg")
PY
