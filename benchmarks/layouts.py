"""The field's benchmark on a labelled folder: train ``params/300w.yaml`` (or ``--params``) and score it.

```
.venv/bin/python benchmarks/layouts.py --data-dir DIR [--params FILE.yaml] [--run-dir DIR] [--json] [-p NAME VALUE]
```

Trains the profile on ``DIR`` (any format of docs/data.md; default ``../shared/datasets/300w-train``) with
``landmarks train`` into ``--run-dir`` (default ``$LANDMARKS_CACHE/bench/layouts``; resumed when it exists), writes
the final model, then scores the validation split (faces of one photo together, ``seed`` 0) twice with
``landmarks evaluate``: end to end with the model's face localizer, and with ``--boxes labels`` (each face's box from
its labels: the benchmarks' "ground-truth box" protocol). Prints the NME by the outer eye corners (percent), the AUC
and failure rate at 8 % and 10 %, the largest face NME, the faces of photos with several labelled faces, and the
training minutes per stage (``history.csv``). ``--json`` prints one object. Measure alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from landmarks_lib.core import params as P  # noqa: E402
from landmarks_lib.runs import evaluate, workflow  # noqa: E402
from landmarks_lib.runs import train as train_cli  # noqa: E402
from landmarks_lib.runs.compare import train_minutes  # noqa: E402
from landmarks_lib.runs.run_folder import RunFolder  # noqa: E402


def _row(res: dict) -> dict:
    f = res["field"]
    return {"nme_io": f["nme_io"], "auc_08": f["auc_08"], "fr_08": f["fr_08"], "auc_10": f["auc_10"],
            "fr_10": f["fr_10"], "max_nme": res["worst"][0]["nme"] if res["worst"] else None,
            "n_faces": res["n_faces"], "multi_face_photos": res["multi_face_photos"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "datasets", "300w-train"))
    ap.add_argument("--params", default=os.path.join(REPO, "params", "300w.yaml"))
    ap.add_argument("--run-dir", default=os.path.join(P.default_cache_dir(), "bench", "layouts"))
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    extra = [x for pair in args.p for x in ("-p", *pair)]
    rc = train_cli.main(["--data-dir", args.data_dir, "--run-dir", args.run_dir, "--params", args.params, *extra])
    if rc:
        return rc
    params = P.resolve(run_dir=args.run_dir)
    run = RunFolder(args.run_dir)
    workflow.write_model(params, run)
    out = {"data_dir": os.path.abspath(args.data_dir), "params": os.path.relpath(args.params, REPO),
           "training_minutes": train_minutes(run), "wall_minutes": None}
    for key, boxes in (("localizer", None), ("label_boxes", "labels")):
        out[key] = _row(evaluate.evaluate(args.run_dir, args.data_dir, "val", boxes))
    out["wall_minutes"] = round((time.time() - t0) / 60.0, 2)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['params']} on {out['data_dir']}: training minutes {out['training_minutes']}")
    for key in ("localizer", "label_boxes"):
        r = out[key]
        print(f"  {key:12s} NME {r['nme_io']:.3f} %  AUC@0.08 {r['auc_08']:.4f}  FR@0.08 {100 * r['fr_08']:.2f} %  "
              f"AUC@0.10 {r['auc_10']:.4f}  FR@0.10 {100 * r['fr_10']:.2f} %  max {r['max_nme']:.1f} %  "
              f"({r['n_faces']} faces)")
    for m in out["localizer"]["multi_face_photos"]:
        print(f"  several faces: {m['name']} NME {m['nme']:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
