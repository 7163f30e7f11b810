"""The face localizer: a small fully convolutional detector of face boxes, trained on re-framed images.

Where the face is in a frame is a translation-equivariant question, so the localizer answers it with a heatmap
(CenterNet: Zhou et al., "Objects as Points", 2019) rather than one global regression: a backbone trunk cut at
stride 16 and a 3x3 + 1x1 head give, per grid cell of the letterboxed image, the logit of "a face centre is here",
the centre's offset inside the cell and the log of the face's size. Every local maximum of the heatmap is a face;
``codecs.FaceBoxCodec`` owns these target units (``encode`` for training, ``decode`` for inference).

A face box is ``(cx, cy, extent)``: the centre of the landmarks' bounding box and its longer side (the box
``geometry.face_frame`` scales by ``face_scale`` to place the face crop). Coordinates are continuous pixels of the
localizer's input (the letterboxed image, ``S x S``) inside this module, and original pixels once
``geometry.boxes_to_original`` has mapped them back.

Training (``reframe_batch``) re-frames each letterboxed training image on the fly, so that the detector sees what
users' photos look like rather than the training set's framing alone: a new frame of aspect ratio 0.4-2.5 around the
face (padded with a flat colour where it leaves the image), the face anywhere in it and down to a fifth of its long
side, a horizontal flip, and in a share of the images a second, smaller face of another training image pasted
further from the centre. Both faces are positives: the localizer finds faces, and ``choose`` applies the contest's
rule (one labelled face per image, the dominant one: the largest among the confident detections) and never
averages two faces.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .codecs import STRIDE
from .landmark import feature_extractor, load_pretrained

CHANNELS = 4  # heatmap logit, x offset, y offset, log(extent / S)
PRIOR = 0.1  # the heatmap's initial probability (CenterNet's bias init)


class FaceBoxNet(nn.Module):
    """``[B, 3, S, S]`` normalised images -> ``[B, 4, S/16, S/16]`` (heatmap logit, offsets, log size per cell)."""

    def __init__(self, trunk: nn.Module, width: int, channels: int = 64):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Sequential(nn.Conv2d(width, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True), nn.Conv2d(channels, CHANNELS, 1))
        with torch.no_grad():
            self.head[-1].bias.zero_()
            self.head[-1].bias[0] = -math.log((1 - PRIOR) / PRIOR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def _trunk_at_stride(net: nn.Module, stride: int = STRIDE, probe: int = 64) -> tuple[nn.Module, int]:
    """The leading layers of a torchvision classifier's trunk up to output stride ``stride``, and their width."""

    layers = list(feature_extractor(net).children())
    keep, width = [], None
    x = torch.zeros(1, 3, probe, probe)
    with torch.no_grad():
        for layer in layers:
            y = layer.eval()(x)
            if y.shape[-1] < probe // stride:
                break
            keep.append(layer)
            x, width = y, y.shape[1]
    if x.shape[-1] != probe // stride:
        raise ValueError(f"{type(net).__name__}: no trunk prefix at stride {stride}")
    return nn.Sequential(*keep), int(width)


def build_localizer(backbone: str, pretrained: bool = False) -> FaceBoxNet:
    """A ``FaceBoxNet`` on a torchvision backbone's trunk cut at stride 16 (ImageNet weights with ``pretrained``).

    Raises:
        ValueError: a backbone without a known trunk. models.WeightsUnavailable: weights cannot be had.
    """


    net = load_pretrained(backbone) if pretrained else torchvision.models.get_model(backbone, weights=None)
    trunk, width = _trunk_at_stride(net)
    return FaceBoxNet(trunk, width)


def facebox_loss(out: torch.Tensor, target: dict) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heatmap plus L1 on offset and log size at the faces'
    cells, each normalised by the number of faces.

    Args:
        out: ``[B, 4, G, G]`` network output. target: ``codecs.FaceBoxCodec.encode``'s dict.
    """
    logit = out[:, 0].float()
    heat = target["heat"]
    pos = heat >= 1 - 1e-6
    p = torch.sigmoid(logit)
    log_p, log_q = F.logsigmoid(logit), F.logsigmoid(-logit)
    focal = torch.where(pos, (1 - p) ** 2 * log_p, (1 - heat) ** 4 * p ** 2 * log_q)
    n = target["present"].sum().clamp_min(1)
    flat = out[:, 1:].float().flatten(2)  # [B, 3, G*G]
    at = torch.gather(flat, 2, target["cell"][:, None, :].expand(-1, 3, -1))  # [B, 3, F]
    m = target["present"].to(at.dtype)
    reg = ((at[:, 0:2].permute(0, 2, 1) - target["offset"]).abs().sum(-1) * m).sum()
    reg = reg + ((at[:, 2] - target["log_size"]).abs() * m).sum()
    return -focal.sum() / n + reg / n
