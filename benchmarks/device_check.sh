#!/usr/bin/env bash
# The GPU path in at most 6 minutes on one CUDA GPU, with whatever torch is installed there:
#
#   benchmarks/device_check.sh OUTDIR        (from the repository root; PYTHON=... picks the interpreter)
#
# 1. env.json           torch, CUDA and the GPU's name
# 2. cuda_tests.json    pytest -m cuda (tests/test_cuda.py: GPU augmentation vs CPU, pinned loader, a bf16 epoch)
# 3. throughput.json    benchmarks/throughput.py --params params/gpu.yaml on synthetic images (1 round, no CSV)
# 4. train.json         a 3-minute landmarks_lib.train run of params/gpu.yaml on synthetic images (no pretrained
#                       weights: the machine may have none), each stage capped by time_budget_min; its history
# 5. summary.json       the above in one object, with contest-size figures EXTRAPOLATED from the measured rates
#                       (labelled as such)
#
# Every step has its own timeout, writes its log beside its JSON and never stops the others; the exit status is 0
# when every step passed. Nothing outside OUTDIR is written (the synthetic data and the run live there).
set -u
if [ $# -ne 1 ]; then echo "usage: $0 OUTDIR" >&2; exit 2; fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
N_TRAIN=${N_TRAIN:-4000}   # synthetic training images (at most 20,000; 4,000 write in about a minute on 16 cores)
export LANDMARKS_CACHE="$OUT/cache" MPLBACKEND=Agg
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run, log, record the exit code
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" >> "$OUT/steps.jsonl"
  [ $rc -eq 0 ] || status=1
  echo "[device_check] $name: exit $rc in $((SECONDS - t0)) s" >&2
}
: > "$OUT/steps.jsonl"

step env 60 "$PY" -c "
import json, torch
d = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'available': torch.cuda.is_available()}
if d['available']:
    d['gpu'] = torch.cuda.get_device_name(0)
    d['bf16'] = torch.cuda.is_bf16_supported()
json.dump(d, open('$OUT/env.json', 'w'))
print(d)"

step cuda_tests 90 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml"
"$PY" - "$OUT" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
try:
    s = ET.parse(f"{out}/cuda_tests.xml").getroot()
    s = s if s.tag == "testsuite" else s[0]
    d = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError, IndexError) as e:
    d = {"error": str(e)}
json.dump(d, open(f"{out}/cuda_tests.json", "w"))
EOF

step synthetic 120 "$PY" -m landmarks_lib.synthetic "$OUT/data" --n-train "$N_TRAIN" --n-test 64

step throughput 90 "$PY" benchmarks/throughput.py --params params/gpu.yaml --data-dir "$OUT/data" --rounds 1 \
  --no-csv --json
sed -n '$p' "$OUT/throughput.log" > "$OUT/throughput.json"

step train 200 "$PY" -m landmarks_lib.train --data-dir "$OUT/data" --run-dir "$OUT/run" --params params/gpu.yaml \
  -p time_budget_min 1.4 -p pretrained false -p localizer_pretrained false -p cache_dir "$OUT/cache" --quiet

"$PY" - "$OUT" "$N_TRAIN" <<'EOF'
import json, os, sys
out, n_train = sys.argv[1], int(sys.argv[2])
CONTEST_TRAIN = 393930


def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


steps = {}
with open(os.path.join(out, "steps.jsonl")) as f:
    for line in f:
        s = json.loads(line)
        steps[s["step"]] = {"rc": s["rc"], "wall_s": s["wall_s"]}
train = {}
hist = os.path.join(out, "run", "history.csv")
if os.path.exists(hist):
    import pandas as pd
    df = pd.read_csv(hist)
    train = {"history": df.to_dict("records"),
             "stages": {s: {"epochs": int(g["epoch"].max()), "time_s": float(g["time_s"].max()),
                            "best_val_mse": float(g["val_mse"].min())} for s, g in df.groupby("stage", sort=False)}}
json.dump(train, open(os.path.join(out, "train.json"), "w"))
thr = load("throughput.json") or {}
summary = {"env": load("env.json"), "steps": steps, "cuda_tests": load("cuda_tests.json"), "throughput": thr,
           "train": train.get("stages"), "n_train_synthetic": n_train}
rate = thr.get("train_step_img_s")
if rate:
    # EXTRAPOLATED, not measured: one epoch of the contest's training images at the measured full-step rate.
    summary["extrapolated_contest_epoch_min"] = round(CONTEST_TRAIN / rate / 60.0, 1)
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(summary)[:2000])
EOF
exit $status
