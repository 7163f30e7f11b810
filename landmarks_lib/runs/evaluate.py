"""Scoring a run's final model on labelled faces by the field's measures.

``landmarks evaluate --checkpoint RUN --data-dir DIR [--split val|all] [--boxes labels|FILE.csv] [--json]
[--inference accurate|fast] [--backend auto|torch|onnx]`` predicts every face of ``DIR`` (any format of
``data.formats``; ``--split val``, the default when ``DIR`` is the run's own data folder, takes only the run's
validation split, recomputed from its parameters) and prints:

- the field's NME (per image, normalised by the outer eye corners, then the mean over images), with the CED's AUC
  and failure rate at 8 % and 10 % (``metrics.field_summary``), for layouts with known eye corners (68, 98 points);
- the box NME (``metrics.per_image_nme``: any layout) and, for the contest's integer tables, the MSE in pixels²;
- the same per subset: each top-level sub-folder of the image paths, and WFLW's attribute subsets;
- the faces of photos with several labelled faces (``formats.photo_groups``), each with its NME, and the worst faces.

``--boxes labels`` gives the model each face's box from its labels (the landmarks' extent: the benchmarks'
"ground-truth box" protocol); ``--boxes FILE.csv`` reads ``file_name,x0,y0,x1,y1`` (continuous original pixels;
``inference.predict.read_boxes_csv``, the predict command's reader);
without it, the model's own face localizer. ``--json`` prints the figures as one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ..core import logs
from ..core.params import resolve
from ..data import formats
from ..evaluation import metrics
from ..inference import predict as predict_cli
from ..inference.predictor import Predictor
from ..training import engine
from .workflow import resolve_data_dir

LOG = logs.logger(__name__)
CHUNK = 64  # images read and predicted at a time


def label_boxes(points) -> np.ndarray:
    """``float32 [N, 4]`` ``x0, y0, x1, y1``: the extent of each face's labelled points (continuous pixels, NaN
    points left out): the face box of the "ground-truth box" protocol."""
    p = np.asarray(points, np.float64)
    return np.concatenate([np.nanmin(p, axis=1), np.nanmax(p, axis=1)], axis=1).astype(np.float32)


def predict_faces(predictor: Predictor, root, names, boxes=None):
    """``(points float32 [N, K, 2], faces int32 [N])`` of the images ``root/name``, ``CHUNK`` at a time
    (``Predictor.predict_iter``).

    Raises:
        OSError: an image that cannot be read (named).
    """
    paths = [os.path.join(root, *n.split("/")) for n in names]
    pts, faces = [], []
    for s, pr in zip(range(0, len(paths), CHUNK), predictor.predict_iter(paths, CHUNK, boxes)):
        if pr.errors:
            i, msg = next(iter(pr.errors.items()))
            raise OSError(f"{paths[s + i]}: {msg}")
        pts.append(pr.points)
        faces.append(pr.faces)
    return np.concatenate(pts), np.concatenate(faces)


def _subsets(names, attributes) -> dict:
    """``{subset name: bool [N]}``: each top-level folder (when there are several) and each attribute."""
    top = np.array([n.split("/", 1)[0] if "/" in n else "" for n in names])
    out = {f"folder {t}": top == t for t in sorted(set(top))} if len(set(top)) > 1 else {}
    for k, v in (attributes or {}).items():
        if np.asarray(v).dtype == bool:
            out[k] = np.asarray(v)
    return out


def score(pred, truth, names, attributes=None, integer_labels: bool = False) -> dict:
    """The figures ``evaluate`` prints, for ``[N, K, 2]`` predictions and labels (continuous pixels).

    Returns:
        ``{"n_faces", "nme_box", "field": metrics.field_summary, "mse" (integer tables only), "subsets": {name:
        {"n_faces", "nme_box", "field"}}, "multi_face_photos": [{"name", "nme"}], "worst": [{"name", "nme"}]}``;
        ``nme`` values are the field's when the layout has eye corners, else the box NME (percent).
    """
    box = metrics.per_image_nme(pred, truth)
    field = metrics.field_summary(pred, truth)
    each = metrics.per_image_nme(pred, truth, "outer_eyes") if field else box
    out = {"n_faces": len(names), "nme_box": float(np.nanmean(box)) if len(box) else float("nan"), "field": field}
    if integer_labels:
        out["mse"] = metrics.mse(pred, truth)
    out["subsets"] = {k: {"n_faces": int(m.sum()), "nme_box": float(np.nanmean(box[m])),
                          "field": metrics.field_summary(pred[m], truth[m])}
                      for k, m in _subsets(names, attributes).items() if m.any()}
    groups = formats.photo_groups(names)
    counts = {g: groups.count(g) for g in set(groups)}
    out["multi_face_photos"] = [{"name": n, "nme": float(e)} for n, g, e in zip(names, groups, each) if counts[g] > 1]
    order = np.argsort(-np.nan_to_num(each, nan=np.inf))[:10]
    out["worst"] = [{"name": names[i], "nme": float(each[i])} for i in order]
    return out


def _format(res: dict) -> str:
    f = res["field"]
    lines = [f"{res['n_faces']} faces, boxes: {res['boxes']}, split: {res['split']}"]
    if f:
        lines.append(f"NME (outer eye corners) {f['nme_io']:.3f} %   AUC@0.08 {f['auc_08']:.4f}   FR@0.08 "
                     f"{100 * f['fr_08']:.2f} %   AUC@0.10 {f['auc_10']:.4f}   FR@0.10 {100 * f['fr_10']:.2f} %")
    lines.append(f"NME (box) {res['nme_box']:.3f} %" + (f"   MSE {res['mse']:.3f} px^2" if "mse" in res else ""))
    for k, s in res["subsets"].items():
        io = f"   NME (eyes) {s['field']['nme_io']:.3f} %" if s["field"] else ""
        lines.append(f"  {k}: {s['n_faces']} faces, NME (box) {s['nme_box']:.3f} %{io}")
    if res["multi_face_photos"]:
        lines.append(f"faces of photos with several labelled faces ({len(res['multi_face_photos'])}):")
        lines += [f"  {m['name']}: NME {m['nme']:.2f} %" for m in res["multi_face_photos"]]
    lines.append("worst faces: " + ", ".join(f"{w['name']} {w['nme']:.2f} %" for w in res["worst"][:5]))
    return "\n".join(lines)


def _attributes(params: dict, data, idx) -> dict:
    """The reader's per-face subsets (WFLW's attributes) of the faces ``idx``; ``{}`` when the table was sampled."""
    ds = formats.read_dataset(params["data_dir"], params["data_format"],
                              allow_links_outside=params.get("allow_links_outside", False))
    if list(ds.table.names) != list(data.names):
        return {}
    return {k: np.asarray(v)[idx] for k, v in ds.attributes.items() if np.asarray(v).dtype == bool}


def evaluate(checkpoint, data_dir, split: str = "auto", boxes=None, inference: str = "accurate",
             backend: str = "auto", data_format: str | None = None) -> dict:
    """Predict and score the labelled faces of ``data_dir`` with the final model of run folder ``checkpoint``.

    Args:
        split: ``val`` (the run's validation split of ``data_dir``), ``all``, or ``auto`` (``val`` when
            ``data_dir`` is the run's own data folder).
        boxes: ``None`` (the localizer), ``"labels"`` (``label_boxes``) or a CSV path
            (``inference.predict.read_boxes_csv``).
        backend: ``auto`` (as the predict CLI: onnx through a current export when onnxruntime imports), ``torch``
            or ``onnx``. data_format: the format of ``data_dir`` (default the run's ``data_format``).
    Returns:
        ``score``'s dict, with ``"boxes"`` and ``"split"``.
    Raises:
        DataFormatError: the data folder's reader. FileNotFoundError: no final model in ``checkpoint``.
    """
    params = resolve(run_dir=checkpoint)
    own = os.path.realpath(resolve_data_dir(params)) == os.path.realpath(data_dir)
    split = ("val" if own else "all") if split == "auto" else split
    params = dict(params, data_dir=data_dir, max_train_images=0 if not own else params["max_train_images"])
    if data_format:
        params["data_format"] = data_format
    if split == "all":
        params["val_fraction"] = 0.0
    data = engine.load_train_data(params, progress=False)
    idx = data.val_idx if split == "val" else data.train_idx
    names = [data.names[i] for i in idx]
    truth = data.points(idx)
    if boxes == "labels":
        given = label_boxes(truth)
    else:
        given = None if boxes is None else predict_cli.read_boxes_csv(boxes, names, data.image_dir)
    backend = predict_cli.resolve_cli_backend(backend, [checkpoint], params["device"])
    predictor = Predictor.load(checkpoint, device=params["device"], backend=backend, inference=inference)
    pred, _ = predict_faces(predictor, data.image_dir, names, given)
    res = score(pred, truth, names, _attributes(params, data, idx), data.table.points.dtype.kind == "i")
    return dict(res, boxes=boxes or "localizer", split=split)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="landmarks evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run folder")
    p.add_argument("--data-dir", required=True, help="labelled faces, in any format of docs/data.md")
    p.add_argument("--split", choices=("auto", "val", "all"), default="auto")
    p.add_argument("--boxes", default=None, help="'labels' or a file_name,x0,y0,x1,y1 CSV (default: the localizer)")
    p.add_argument("--inference", choices=("accurate", "fast"), default="accurate")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument("--data-format", choices=("auto", *formats.FORMATS), default=None,
                   help="the format of --data-dir (default: the run's data_format)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = evaluate(args.checkpoint, args.data_dir, args.split, args.boxes, args.inference, args.backend,
                       args.data_format)
    except (OSError, ValueError) as e:
        print(f"landmarks evaluate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=2, allow_nan=True) if args.json else _format(res))
    return 0
