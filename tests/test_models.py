"""Model factory: backbones, output shape, mean-shape head, input normalisation, pretrained-weights fallback."""

import os
import urllib.error

import pytest
import torch
import torchvision

from landmarks_lib.models import codecs, landmark

SHARED_TORCH_HOME = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "torch_home")


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "resnext50_32x4d", "efficientnet_b0"])
def test_backbones_give_k_points(backbone):
    m = landmark.build_model(backbone, num_points=7).eval()
    with torch.no_grad():
        out = m(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 7, 2)


def test_head_starts_at_the_mean_shape():
    shape = torch.tensor([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.25]])
    m = landmark.build_model("resnet18", 3, init_shape=shape).eval()
    with torch.no_grad():
        out = m(torch.randn(4, 3, 48, 48))
    # weights scaled down 100x: every output is close to the mean shape
    assert (out - shape).abs().max() < 0.05
    px = codecs.LandmarkCodec(96, True).decode(shape)
    torch.testing.assert_close(px, (shape + 0.5) * 96)
    torch.testing.assert_close(codecs.LandmarkCodec(96, True).encode(px), shape)
    torch.testing.assert_close(codecs.LandmarkCodec(96, False).encode(px), px)


def test_input_normalization():
    mean, std = landmark.input_normalization("mobilenet_v2", "weights")
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    assert landmark.input_normalization("resnet18", "half") == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="input_norm"):
        landmark.input_normalization("resnet18", "zscore")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        landmark.build_model("resnet9000", 5)


def test_unavailable_weights_give_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(landmark.WeightsUnavailable) as e:
        landmark.build_model("resnet18", 5, pretrained=True)
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and "TORCH_HOME" in msg and "pretrained=false" in msg


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_TORCH_HOME, "hub", "checkpoints")),
                    reason="../shared/torch_home not present")
def test_pretrained_mobilenet_loads_offline_from_torch_home(monkeypatch):
    monkeypatch.setenv("TORCH_HOME", os.path.abspath(SHARED_TORCH_HOME))
    m = landmark.build_model("mobilenet_v2", 5, pretrained=True)
    ref = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")
    torch.testing.assert_close(m.backbone.features[0][0].weight, ref.features[0][0].weight)


@pytest.mark.parametrize("backbone,size,grid", [("resnet18", 64, 2), ("mobilenet_v2", 96, 3)])
def test_spatial_head_keeps_the_feature_grid_and_starts_at_the_mean_shape(backbone, size, grid):
    shape = torch.tensor([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.25]])
    m = landmark.build_model(backbone, 3, init_shape=shape, head="spatial", crop_size=size).eval()
    assert isinstance(m, landmark.SpatialLandmarkModel)
    assert m.head.in_features == 128 * grid * grid
    with torch.no_grad():
        x = torch.randn(4, 3, size, size)
        out = m(x)
        f = m.backbone(x)
        direct = m.head(m.reduce(f).flatten(1)).view(4, 3, 2)
    assert f.shape[-2:] == (grid, grid)  # the head's input is the whole grid, cell by cell, not its average
    assert out.shape == (4, 3, 2) and (out - shape).abs().max() < 0.05
    torch.testing.assert_close(out, direct)
    with pytest.raises(ValueError, match="crop_size"):
        landmark.build_model(backbone, 3, head="spatial")
    with pytest.raises(ValueError, match="head"):
        landmark.build_model(backbone, 3, head="heatmap")


def test_softargmax_head_starts_at_the_mean_shape_and_reads_its_heatmaps():
    shape = torch.tensor([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.25]])
    m = landmark.build_model("resnet18", 3, init_shape=shape, head="softargmax", crop_size=64).eval()
    assert isinstance(m, landmark.SoftArgmaxLandmarkModel) and m.prior.shape == (3, 4, 4)  # 2x2 grid, upsampled 2x
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 2)
    assert (out - shape).abs().max() < 0.03  # a Gaussian prior half a cell wide, cut by the coarse grid
    # one dominant cell: the point sits at that cell's centre, (j + 0.5) / s - 0.5 in target units
    with torch.no_grad():
        m.prior.zero_()
        m.prior[1, 3, 0] = 50.0  # row 3, column 0
        out = m(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.5 / 4 - 0.5, 3.5 / 4 - 0.5]), rtol=0, atol=1e-3)
