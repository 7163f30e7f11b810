"""ONNX export and the onnxruntime backend: same points as torch, the export folder, both CLIs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from landmarks_lib.core.coords import labels_to_points
from landmarks_lib.core.images import load_image
from landmarks_lib.data import synthetic
from landmarks_lib.data.tables import read_landmarks
from landmarks_lib.inference import backends, export
from landmarks_lib.inference.predictor import Predictor
from landmarks_lib.models import checkpoint, landmark, networks

K = 20
TOL_PX = 2e-3


def _part(backbone, head, crop_size, crop_mode, seed):
    """An untrained network (head at a mean shape, so its points stay on the crop) and its meta."""
    torch.manual_seed(seed)
    shape = torch.rand(K, 2) * 0.6 - 0.3
    net = landmark.build_model(backbone, K, head=head, crop_size=crop_size, init_shape=shape)
    meta = {"backbone": backbone, "num_points": K, "crop_size": crop_size, "crop_mode": crop_mode,
            "face_scale": 1.25, "input_mean": [0.485, 0.456, 0.406], "input_std": [0.229, 0.224, 0.225],
            "normalize_targets": True, "dropout": 0.0, "stage": "test", "head": head,
            "flip_perm": list(range(K))[::-1], "flip_unmatched": []}
    return {"meta": meta, "state_dict": net.state_dict()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(model.pt path, model dict, image folder, images)``: a ``face`` model with a localizer (linear head) and a
    soft-argmax face network, flip TTA and one refinement; synthetic images of several sizes."""
    root = tmp_path_factory.mktemp("export")
    synthetic.write_dataset(root / "data", n_train=6, n_test=0, num_points=K, seed=5, min_size=60, max_size=90)
    image_dir = root / "data" / "train" / "images"
    model = {"kind": "model", "localizer": _part("resnet18", "linear", 32, "letterbox", 0),
             "face": _part("resnet18", "softargmax", 64, "face", 1),
             "inference": {"tta_flip": True, "refine_steps": 1, "tta_scales": "1.0"}, "val_mse": 1.5,
             "source": "test"}
    path = str(root / "model.pt")
    checkpoint.save(path, model)
    images = [load_image(image_dir / n) for n in sorted(os.listdir(image_dir))]
    return path, checkpoint.load_model(path), str(image_dir), images


def test_onnx_backend_predicts_the_torch_points(setup):
    path, model, _, images = setup
    torch_pred = Predictor.load(path, "cpu", micro_batch=4).predict(images)
    onnx_pr = Predictor.load(path, "cpu", backend="onnx", micro_batch=4)
    onnx_pred = onnx_pr.predict(images)
    assert onnx_pr.backend == "onnx" and onnx_pred.points.shape == (len(images), K, 2)
    assert np.isfinite(onnx_pred.points).all()
    assert np.abs(onnx_pred.points - torch_pred.points).max() <= TOL_PX
    assert np.abs(onnx_pred.boxes - torch_pred.boxes).max() <= TOL_PX
    # the network alone: the torch module's output shape and values, at any batch size
    net, onnx_net = networks.network(model["face"]), export.onnx_network(model["face"])
    for n in (1, 5):
        x = torch.randn(n, 3, 64, 64)
        with torch.no_grad():
            want = net(x)
        got = onnx_net(x.numpy())
        assert got.shape == tuple(want.shape) and got.dtype == np.float32
        assert np.abs(got - want.numpy()).max() < 1e-4
    # thread limits follow torch's
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        onnx_net(np.zeros((1, 3, 64, 64), np.float32))
        assert onnx_net._threads == 1
    finally:
        torch.set_num_threads(threads)


class _Grid(torch.nn.Module):
    """A network whose output is a feature grid ``[N, C, G, G]`` (as a heatmap localizer's)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 7, 3, stride=4, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_any_single_tensor_network_exports_with_a_free_batch():
    net = _Grid().eval()
    onnx_net = export.onnx_network(export.to_onnx(net, 32))
    for n in (1, 3):
        x = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            want = net(x)
        got = onnx_net(x.numpy())
        assert got.shape == tuple(want.shape) == (n, 7, 8, 8)
        assert np.abs(got - want.numpy()).max() < 1e-5


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", f"landmarks_lib.{module}", *map(str, args)], capture_output=True,
                          text=True)


def _main(capsys, *args):
    """``export.main`` in this process (no interpreter start): ``(exit status, stderr)``."""
    code = export.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _one_line_error(code, err):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error:")


def test_export_cli_writes_a_folder_the_onnx_backend_predicts_from(setup, tmp_path, capsys):
    path, model, _, images = setup
    out = tmp_path / "exported"
    r = _run("export", "--checkpoint", path, "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["face.onnx", "localizer.onnx", "model.json"]
    doc = json.loads((out / "model.json").read_text())
    assert doc["format"] == export.FORMAT and doc["source"] == os.path.abspath(path)
    assert doc["inference"] == model["inference"] and doc["opset"] >= 17
    face = doc["parts"]["face"]
    assert face["file"] == "face.onnx" and face["meta"]["crop_size"] == 64 and face["meta"]["crop_mode"] == "face"
    assert face["meta"]["flip_perm"] == model["face"]["meta"]["flip_perm"] and face["meta"]["num_points"] == K
    assert doc["parts"]["localizer"]["meta"]["input_std"] == [0.229, 0.224, 0.225]

    from_folder = Predictor.load(str(out), "cpu", backend="onnx", micro_batch=4)
    want = Predictor.load(path, "cpu", micro_batch=4).predict(images)
    assert np.abs(from_folder.predict(images).points - want.points).max() <= TOL_PX
    with pytest.raises(checkpoint.CheckpointError, match="backend='onnx'"):
        Predictor.load(str(out), "cpu")
    assert _main(capsys, "--checkpoint", path, "--out", out)[0] == 0  # a previous export is replaced

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, err = _main(capsys, "--checkpoint", path, "--out", other)
    _one_line_error(code, err)
    assert "not empty" in err and os.listdir(other) == ["notes.txt"]
    code, err = _main(capsys, "--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "new")
    _one_line_error(code, err)
    assert "missing.pt" in err and not (tmp_path / "new").exists()


def test_predict_cli_runs_the_onnx_backend(setup, tmp_path):
    path, _, image_dir, images = setup
    out = tmp_path / "pred.csv"
    r = _run("predict", "--checkpoint", path, "--images", image_dir, "--out", out, "--device", "cpu",
             "--backend", "onnx")
    assert r.returncode == 0, r.stderr
    table = read_landmarks(out)
    assert table.names == sorted(os.listdir(image_dir))
    want = Predictor.load(path, "cpu").predict(images).points
    np.testing.assert_allclose(labels_to_points(table.points), want, atol=0.006)  # the file holds 2 decimals


def test_bad_backend_and_missing_onnxruntime(setup, monkeypatch):
    path, model, _, _ = setup
    with pytest.raises(ValueError, match="backend"):
        Predictor(model, "cpu", backend="tensorflow")
    with pytest.raises(ValueError, match="inference= by keyword"):
        Predictor.load(path, "cpu", "fast")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(RuntimeError, match="pip install onnx onnxruntime"):
        Predictor(model, "cpu", backend="onnx")


def test_predicting_from_an_export_folder_never_imports_torch(setup, tmp_path):
    """The deployment path (an export folder, the onnx backend) runs on numpy and onnxruntime alone: the predict CLI
    in a fresh interpreter writes the same points as the torch backend and leaves torch unimported."""
    path, _, image_dir, images = setup
    folder, out = tmp_path / "exported", tmp_path / "pred.csv"
    export.export(path, folder)
    code = ("import sys\nfrom landmarks_lib.inference import predict\n"
            f"rc = predict.main(['--checkpoint', {str(folder)!r}, '--images', {image_dir!r}, '--out', {str(out)!r}, "
            "'--backend', 'onnx', '--inference', sys.argv[1]])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nraise SystemExit(rc)\n")
    for inference in ("accurate", "fast"):
        r = subprocess.run([sys.executable, "-c", code, inference], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        want = Predictor.load(path, "cpu", inference=inference).predict(images).points
        np.testing.assert_allclose(labels_to_points(read_landmarks(out).points), want, atol=0.006)
    faces = (tmp_path / "pred.faces.csv").read_text().splitlines()
    assert faces[0] == "file_name,crop_x0,crop_y0,crop_x1,crop_y1,confidence,faces" and len(faces) == len(images) + 1


def _run_folder_with_export(setup, root):
    """A run-folder-like folder: ``model.pt`` (the setup's model) and the ``export/`` made from it."""
    path = setup[0]
    run = root / "run"
    run.mkdir()
    shutil.copy(path, run / "model.pt")
    export.export(run / "model.pt", run / backends.RUN_EXPORT)
    return run


def test_a_run_folder_predicts_through_its_export_without_torch(setup, tmp_path):
    """``model.pt``'s export in the run folder serves the predict CLI (backend auto): torch stays unimported and
    the points are those of the export folder."""
    _, _, image_dir, images = setup
    run = _run_folder_with_export(setup, tmp_path)
    assert backends.run_export(run) == str(run / backends.RUN_EXPORT)
    out = tmp_path / "pred.csv"
    code = ("import sys\nfrom landmarks_lib.inference import predict\n"
            f"rc = predict.main(['--checkpoint', {str(run)!r}, '--images', {image_dir!r}, '--out', {str(out)!r}])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nraise SystemExit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = Predictor.load(run / backends.RUN_EXPORT, "cpu", backend="onnx").predict(images).points
    np.testing.assert_allclose(labels_to_points(read_landmarks(out).points), want, atol=0.006)


def test_a_stale_or_mixed_export_is_never_served(setup, tmp_path):
    """A ``model.pt`` rewritten after its export makes the export stale (bypassed: the model is loaded from
    ``model.pt``); an export folder whose ONNX file is not the one ``model.json`` lists is refused."""
    run = _run_folder_with_export(setup, tmp_path)
    model = checkpoint.load_model(run / "model.pt")
    model["face"]["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v
                                   for k, v in model["face"]["state_dict"].items()}
    checkpoint.save(str(run / "model.pt"), model)
    assert backends.run_export(run) is None
    loaded = Predictor.load(run, "cpu", backend="onnx")
    assert loaded.models[0]["face"].get("onnx") is None  # from model.pt, exported in memory
    # an export interrupted partway: a new face.onnx beside the old model.json
    other = tmp_path / "other"
    export.export(run / "model.pt", other)
    shutil.copy(other / "face.onnx", run / backends.RUN_EXPORT / "face.onnx")
    with pytest.raises(checkpoint.CheckpointError, match="does not match model.json"):
        backends.read_export(run / backends.RUN_EXPORT)
    assert backends.read_export(other)["face"]["onnx"].endswith("face.onnx")


def test_the_core_install_predicts_from_an_export(setup, tmp_path):
    """``pip install .`` (numpy, Pillow, onnxruntime, PyYAML) is enough for ``landmarks predict`` on an export
    folder: the command runs with torch, torchvision, onnx, pandas, matplotlib, tqdm and the notebook tools made
    unimportable."""
    path, _, image_dir, images = setup
    folder, out = tmp_path / "exported", tmp_path / "pred.csv"
    export.export(path, folder)
    code = (
        "import importlib.abc, sys\n"
        "OPTIONAL = {'torch', 'torchvision', 'onnx', 'pandas', 'matplotlib', 'tqdm', 'plotly', 'papermill',\n"
        "            'nbformat', 'nbconvert', 'jupytext', 'nbdime'}\n"
        "class NotInstalled(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in OPTIONAL:\n"
        "            raise ImportError(f'No module named {name!r} (core install)')\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from landmarks_lib.cli import main\n"
        f"raise SystemExit(main(['predict', '--checkpoint', {str(folder)!r}, '--images', {image_dir!r}, "
        f"'--out', {str(out)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = Predictor.load(folder, "cpu", backend="onnx").predict(images).points
    np.testing.assert_allclose(labels_to_points(read_landmarks(out).points), want, atol=0.006)
