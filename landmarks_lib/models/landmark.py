"""Landmark regressors: a torchvision backbone and a linear head of ``2K`` outputs, fed either by globally pooled
features (``head="linear"``, the course baseline's) or by the backbone's last feature grid reduced to a few channels
and flattened (``head="spatial"``), which keeps where on the face each feature was seen.

Outputs are ``[B, K, 2]`` (x, y) in *target units*: with ``normalize_targets`` the crop coordinates divided by the
crop size minus 0.5 (so the crop spans ``[-0.5, 0.5]``), and the head's bias starts at the mean shape with small
weights (the "mean-shape initialisation" of cascaded regression, e.g. Xiong & De la Torre, SDM, CVPR 2013);
without it, crop pixels (the course baseline). ``to_crop_pixels`` converts either to crop pixels.

Pretrained weights come only through torchvision's weights API (``torchvision.models.get_model_weights``), so a
user with internet or a filled ``TORCH_HOME`` cache gets them; when they cannot be had, ``WeightsUnavailable``
says which file is needed and where to put it, instead of hanging or failing deep inside.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.nn as nn
import torchvision

from ..core import params

HALF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be loaded (offline and not cached); the message says what to do."""


def weights_enum(backbone: str, name: str = "IMAGENET1K_V1"):
    """A backbone's torchvision weights entry: ``name`` (default ``IMAGENET1K_V1``, which every torchvision
    classification model has) or the model's ``DEFAULT`` if it has no such entry.

    Raises:
        ValueError: unknown backbone.
    """

    try:
        enum = torchvision.models.get_model_weights(backbone)
    except (ValueError, KeyError) as e:
        raise ValueError(f"unknown backbone {backbone!r}; try one of {params.BACKBONES}") from e
    return enum[name] if name in enum.__members__ else enum.DEFAULT


def input_normalization(backbone: str, input_norm: str = "weights") -> tuple[tuple, tuple]:
    """``(mean, std)`` per RGB channel for inputs in ``[0, 1]``: the backbone weights' own (from their transforms)
    for ``input_norm="weights"``, or 0.5/0.5 (the course baseline) for ``"half"``."""
    if input_norm == "half":
        return HALF_NORM
    if input_norm != "weights":
        raise ValueError(f"input_norm must be 'weights' or 'half', got {input_norm!r}")
    try:
        t = weights_enum(backbone).transforms()
        return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    except ValueError:
        raise
    except Exception:  # pragma: no cover - weights without a normalising transform
        return IMAGENET_NORM


def load_pretrained(backbone: str, timeout_s: float = 20.0) -> nn.Module:
    """Build a torchvision backbone with its ImageNet weights (``weights_enum``), from the cache (``$TORCH_HOME``) or by
    download.

    Raises:
        WeightsUnavailable: the weights are neither cached nor downloadable (message names the file and the fix).
    """

    weights = weights_enum(backbone)
    fname = os.path.basename(weights.url)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
    old = socket.getdefaulttimeout()
    try:
        if not os.path.exists(cached):
            socket.setdefaulttimeout(timeout_s)
        return torchvision.models.get_model(backbone, weights=weights)
    except Exception as e:
        raise WeightsUnavailable(
            f"pretrained weights for {backbone!r} ({weights}) could not be loaded: {type(e).__name__}: {e}. "
            f"Either allow downloads, or put {fname} into {os.path.dirname(cached)} (set TORCH_HOME to a folder "
            f"holding hub/checkpoints/{fname}), or set pretrained=false to train from scratch.") from e
    finally:
        socket.setdefaulttimeout(old)


def _strip_classifier(net: nn.Module) -> tuple[nn.Module, int]:
    """Replace the final classification Linear with Identity; return the net (pooled features out) and width."""
    if hasattr(net, "fc") and isinstance(net.fc, nn.Linear):
        width = net.fc.in_features
        net.fc = nn.Identity()
        return net, width
    if hasattr(net, "classifier"):
        cls = net.classifier
        if isinstance(cls, nn.Linear):
            width = cls.in_features
            net.classifier = nn.Identity()
            return net, width
        if isinstance(cls, nn.Sequential):
            for i in range(len(cls) - 1, -1, -1):
                if isinstance(cls[i], nn.Linear):
                    width = cls[i].in_features
                    cls[i] = nn.Identity()
                    # drop the classifier's own dropout too: ours is a parameter
                    for j in range(len(cls)):
                        if isinstance(cls[j], nn.Dropout):
                            cls[j] = nn.Identity()
                    return net, width
    raise ValueError(f"cannot find the classification layer of {type(net).__name__}")


def feature_extractor(net: nn.Module) -> nn.Module:
    """The convolutional trunk of a torchvision classifier: ``[B, 3, S, S] -> [B, C, S/32, S/32]`` (before pooling).

    Raises:
        ValueError: a model family without a known trunk.
    """
    if hasattr(net, "features") and isinstance(net.features, nn.Module):  # MobileNet, EfficientNet, ConvNeXt
        return net.features
    if all(hasattr(net, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer4")):  # ResNet, ResNeXt
        return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                             net.layer4)
    raise ValueError(f"no known feature trunk in {type(net).__name__}; use head='linear'")


def _reduce(width: int, channels: int) -> nn.Module:
    """1x1 conv from the trunk's ``width`` to ``channels``, batch norm, ReLU: the grid heads' first layer."""
    return nn.Sequential(nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class SpatialLandmarkModel(nn.Module):
    """Trunk -> 1x1 conv to ``channels`` (BN, ReLU) -> flatten the ``g x g`` grid -> dropout -> Linear(2K).

    Global pooling throws away where a feature fired; for dense landmarks that position is most of the signal, so
    the head sees the whole (small) grid, as in the fully connected heads of direct landmark regressors (e.g. Feng
    et al., "Wing loss", CVPR 2018, which flatten the last feature map). ``forward`` returns ``[B, K, 2]`` target
    units; input as ``LandmarkModel``. The grid size is fixed by ``crop_size`` at build time.
    """

    def __init__(self, trunk: nn.Module, width: int, grid: int, num_points: int, channels: int = 128,
                 dropout: float = 0.0):
        super().__init__()
        self.backbone = trunk
        self.reduce = _reduce(width, channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(channels * grid * grid, 2 * num_points)
        self.num_points = num_points

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.reduce(self.backbone(x)).flatten(1)
        return self.head(self.dropout(f)).view(x.shape[0], self.num_points, 2)


class SoftArgmaxLandmarkModel(nn.Module):
    """Integral regression ("soft-argmax", Sun et al., "Integral Human Pose Regression", ECCV 2018): trunk -> 1x1
    conv to ``channels`` (BN, ReLU) -> bilinear ``upsample`` -> 1x1 conv to one heatmap per landmark (plus a learned
    per-point prior) -> softmax over the grid -> each landmark at its heatmap's expected position.

    ``forward`` returns ``[B, K, 2]`` in the normalised target units of ``normalize_targets`` (the crop spans
    ``[-0.5, 0.5]``; heatmap cell ``j`` of ``s`` is centred at ``(j + 0.5) / s - 0.5``). ``init_at`` centres each
    point's prior on the mean shape, so training starts from the mean face as the linear heads do.
    """

    def __init__(self, trunk: nn.Module, width: int, grid: int, num_points: int, channels: int = 128,
                 upsample: int = 2, dropout: float = 0.0):
        super().__init__()
        self.backbone = trunk
        self.reduce = _reduce(width, channels)
        self.upsample = upsample
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(channels, num_points, 1)
        side = grid * upsample
        self.prior = nn.Parameter(torch.zeros(num_points, side, side))
        self.register_buffer("cells", (torch.arange(side, dtype=torch.float32) + 0.5) / side - 0.5, persistent=False)
        self.num_points = num_points

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.reduce(self.backbone(x))
        if self.upsample > 1:
            f = nn.functional.interpolate(f, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        logits = self.head(self.dropout(f)) + self.prior
        b, k, h, w = logits.shape
        p = logits.flatten(2).softmax(-1).view(b, k, h, w)
        return torch.stack([(p.sum(2) * self.cells).sum(-1), (p.sum(3) * self.cells).sum(-1)], -1)

    @torch.no_grad()
    def init_at(self, shape: torch.Tensor, sigma_cells: float = 0.5) -> None:
        """Prior logits ``-d^2 / (2 sigma^2)`` around ``shape`` (``[K, 2]`` target units), heatmap weights / 100."""
        shape = torch.as_tensor(shape, dtype=torch.float32)
        c = self.cells
        d2 = (c[None, None, :] - shape[:, 0, None, None]) ** 2 + (c[None, :, None] - shape[:, 1, None, None]) ** 2
        self.prior.copy_(-d2 / (2 * (sigma_cells / len(c)) ** 2))
        self.head.weight.mul_(0.01)
        self.head.bias.zero_()


class LandmarkModel(nn.Module):
    """Backbone -> pooled features -> dropout -> Linear(2K); ``forward`` returns ``[B, K, 2]`` target units.

    Input: ``float32 [B, 3, S, S]`` images already normalised by ``input_normalization``.
    """

    def __init__(self, backbone: nn.Module, width: int, num_points: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, 2 * num_points)
        self.num_points = num_points

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return self.head(self.dropout(f)).view(x.shape[0], self.num_points, 2)


HEADS = ("linear", "spatial", "softargmax")


def build_model(backbone: str, num_points: int, pretrained: bool = False, dropout: float = 0.0,
                init_shape: torch.Tensor | None = None, head: str = "linear",
                crop_size: int | None = None) -> nn.Module:
    """A landmark regressor.

    Args:
        backbone: a torchvision classification model name (``BACKBONES`` are tested).
        num_points: ``K``.
        pretrained: load the default ImageNet weights (``load_pretrained``).
        init_shape: optional ``[K, 2]`` mean shape in target units: the head starts there (bias) with weights
            scaled down 100x, so training starts from the mean face instead of noise.
        head: ``"linear"`` (pooled features, ``LandmarkModel``), ``"spatial"`` (``SpatialLandmarkModel``) or
            ``"softargmax"`` (``SoftArgmaxLandmarkModel``; outputs normalised target units).
        crop_size: input side in pixels; required for the spatial and soft-argmax heads (it fixes the grid).
    Raises:
        ValueError: unknown backbone or head, or a grid head without ``crop_size``.
        WeightsUnavailable: pretrained weights cannot be had.
    """

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head != "linear" and not crop_size:
        raise ValueError(f"head={head!r} needs crop_size")
    if backbone not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown backbone {backbone!r}: not a torchvision classification model; try one of "
                         f"{params.BACKBONES}")
    net = load_pretrained(backbone) if pretrained else torchvision.models.get_model(backbone, weights=None)
    if head != "linear":
        trunk = feature_extractor(net)
        with torch.no_grad():
            was = trunk.training
            f = trunk.eval()(torch.zeros(1, 3, crop_size, crop_size))
            trunk.train(was)
        if f.shape[-1] != f.shape[-2]:  # pragma: no cover - square crops give square grids
            raise ValueError(f"non-square feature grid {tuple(f.shape)}")
        cls = SpatialLandmarkModel if head == "spatial" else SoftArgmaxLandmarkModel
        model = cls(trunk, f.shape[1], f.shape[-1], num_points, dropout=dropout)
    else:
        net, width = _strip_classifier(net)
        model = LandmarkModel(net, width, num_points, dropout)
    if init_shape is not None and head == "softargmax":
        model.init_at(init_shape)
    elif init_shape is not None:
        with torch.no_grad():
            model.head.weight.mul_(0.01)
            model.head.bias.copy_(torch.as_tensor(init_shape, dtype=torch.float32).reshape(-1))
    return model
