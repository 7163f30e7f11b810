"""The passes around the networks (``inference.passes``), written once in numpy: the training input they share, the
face-box decoding, and the same values through both backends' interface (a torch module and a numpy callable)."""

import numpy as np
import pytest
import torch

from landmarks_lib.data.loading import network_input
from landmarks_lib.inference import backends, passes
from landmarks_lib.models import codecs
from landmarks_lib.runs import workflow

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _numpy(net):
    """A torch network called with and returning numpy, contiguous NCHW (an ``OnnxNetwork`` stands in the same way)."""
    def call(x):
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return call


def test_network_input_equals_the_training_input():
    crops = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    got = passes.network_input(crops, MEAN, STD)
    want = network_input(crops, MEAN, STD, torch.device("cpu")).numpy()
    assert got.dtype == np.float32 and got.shape == (3, 3, 20, 24) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_decode_faceboxes_finds_the_local_maxima():
    rng = np.random.default_rng(1)
    out = rng.normal(size=(5, 4, 6, 6)).astype(np.float32) * 2
    out[1, 0] -= 20  # no face anywhere: every score tiny
    out[2, 0] = -20
    out[2, 0, 1, 4] = 5.0  # one clear face at cell (x 4, y 1)
    out[2, 1:, 1, 4] = [0.25, -0.25, np.log(0.5)]
    boxes, scores = codecs.FaceBoxCodec(96).decode(out)
    assert boxes.shape == (5, 8, 3) and scores.shape == (5, 8) and boxes.dtype == np.float64
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    assert scores[1].max() < 1e-6
    np.testing.assert_allclose(boxes[2, 0], [(4.5 + 0.25) * 16, (1.5 - 0.25) * 16, 48.0], rtol=1e-6)
    np.testing.assert_allclose(scores[2, 0], 1 / (1 + np.exp(-5.0)), rtol=1e-6)


class _Heat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 16, stride=16)

    def forward(self, x):
        return self.conv(x) * 3


@pytest.mark.parametrize("tta", [False, True])
def test_detect_crops_is_the_same_through_both_interfaces(tta):
    net = _Heat().eval()
    meta = {"crop_size": 64, "input_mean": MEAN, "input_std": STD}
    crops = np.random.default_rng(2).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    got = passes.detect_crops(_numpy(net), meta, crops, batch_size=4, tta_flip=tta)
    want = passes.detect_crops(backends.TorchNetwork(net), meta, crops, batch_size=4, tta_flip=tta)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    np.testing.assert_array_equal(got[2], want[2])


class _Points(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        torch.manual_seed(1)
        self.k = k
        self.fc = torch.nn.Linear(3 * 8 * 8, 2 * k)

    def forward(self, x):
        return torch.tanh(self.fc(torch.nn.functional.avg_pool2d(x, 4).flatten(1))).view(-1, self.k, 2) * 0.3


@pytest.mark.parametrize("tta", [False, True])
def test_predict_crops_is_the_same_through_both_interfaces(tta):
    k = 6
    net = _Points(k).eval()
    meta = {"crop_size": 32, "num_points": k, "input_mean": MEAN, "input_std": STD, "normalize_targets": True,
            "flip_perm": [5, 4, 3, 2, 1, 0], "flip_unmatched": [2]}
    crops = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    got = passes.predict_crops(_numpy(net), meta, crops, batch_size=2, tta_flip=tta)
    want = passes.predict_crops(net, meta, crops, batch_size=2, tta_flip=tta)  # a torch module: TorchNetwork
    assert got.dtype == np.float32 and got.shape == (5, k, 2)
    np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="mirror permutation"):
        passes.predict_crops(_numpy(net), dict(meta, flip_perm=None), crops, tta_flip=True)


def test_inference_backend_resolution(monkeypatch):
    p = {"inference_backend": "auto", "device": "cpu"}
    assert workflow.inference_backend(p) == "onnx"
    assert workflow.inference_backend(p, torch.device("cuda")) == "torch"
    assert workflow.inference_backend(dict(p, inference_backend="torch")) == "torch"
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # not installed
    assert workflow.inference_backend(p) == "torch"
    with pytest.raises(RuntimeError, match="pip install onnx onnxruntime"):
        workflow.inference_backend(dict(p, inference_backend="onnx"))


def test_threads_follow_the_environment_without_torch(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "torch")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert backends.num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert backends.num_threads() >= 1
