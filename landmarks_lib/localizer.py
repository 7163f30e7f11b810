"""The face localizer: a small fully convolutional detector of face boxes, trained on re-framed images.

Where the face is in a frame is a translation-equivariant question, so the localizer answers it with a heatmap
(CenterNet: Zhou et al., "Objects as Points", 2019) rather than one global regression: a backbone trunk cut at
stride 16 and a 3x3 + 1x1 head give, per grid cell of the letterboxed image, the logit of "a face centre is here",
the centre's offset inside the cell and the log of the face's size. Every local maximum of the heatmap is a face;
``FaceBoxCodec`` owns these target units (``encode`` for training, ``decode`` for inference), as mmpose's codecs do.

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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment, geometry
from .runtime import HEAD, MIN_SCORE, RELATIVE_SCORE, STRIDE, choose  # noqa: F401  (torch-free; re-exported)

CHANNELS = 4  # heatmap logit, x offset, y offset, log(extent / S)
PRIOR = 0.1  # the heatmap's initial probability (CenterNet's bias init)
REFRAME = 0.8  # share of training samples re-framed (the rest keep their letterbox framing)
SECOND_FACE = 0.3  # share of re-framed samples with a second face pasted in
ASPECT = (0.4, 2.5)  # frame width / height
FACE_SHARE = (0.2, 0.9)  # face extent / frame long side


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
    from .models import feature_extractor

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
    import torchvision

    from .models import load_pretrained

    net = load_pretrained(backbone) if pretrained else torchvision.models.get_model(backbone, weights=None)
    trunk, width = _trunk_at_stride(net)
    return FaceBoxNet(trunk, width)


class FaceBoxCodec:
    """Face boxes <-> the localizer's output grid, for an ``S x S`` input (``S`` divisible by 16).

    Boxes are ``float [n, 3]`` ``(cx, cy, extent)`` in input pixels (continuous convention).
    """

    def __init__(self, size: int, stride: int = STRIDE):
        if size % stride:
            raise ValueError(f"localizer_crop_size must be a multiple of {stride}, got {size}")
        self.size, self.stride, self.grid = int(size), int(stride), int(size) // int(stride)

    def encode(self, boxes: torch.Tensor, present: torch.Tensor) -> dict:
        """Training targets.

        Args:
            boxes: ``float32 [B, F, 3]`` up to ``F`` faces per image; present: ``bool [B, F]``.
        Returns:
            ``{"heat": float32 [B, G, G]`` (Gaussian peaks, 1 at each face's cell), ``"cell": int64 [B, F]`` (flat
            cell index), ``"offset": float32 [B, F, 2]`` (centre within the cell, cell units from its centre),
            ``"log_size": float32 [B, F]``, ``"present"}``.
        """
        g, st = self.grid, self.stride
        c = boxes[..., :2] / st  # cell units
        ij = c.floor().clamp(0, g - 1)
        offset = c - ij - 0.5
        log_size = torch.log(boxes[..., 2].clamp_min(1.0) / self.size)
        sigma = (boxes[..., 2] / st / 5).clamp_min(0.6)  # [B, F]
        u = torch.arange(g, dtype=boxes.dtype, device=boxes.device) + 0.5
        dx = (u[None, None, None, :] - (ij[..., 0] + 0.5)[..., None, None]) ** 2
        dy = (u[None, None, :, None] - (ij[..., 1] + 0.5)[..., None, None]) ** 2
        heat = torch.exp(-(dx + dy) / (2 * sigma[..., None, None] ** 2)) * present[..., None, None]
        cell = (ij[..., 1] * g + ij[..., 0]).long()
        return {"heat": heat.amax(1), "cell": cell, "offset": offset, "log_size": log_size, "present": present}

    def loss(self, out: torch.Tensor, target: dict) -> torch.Tensor:
        """CenterNet's penalty-reduced focal loss on the heatmap plus L1 on offset and log size at the faces'
        cells, each normalised by the number of faces.

        Args:
            out: ``[B, 4, G, G]`` network output. target: ``encode``'s dict.
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

    @torch.no_grad()
    def decode(self, out: torch.Tensor, top: int = 8):
        """Detections of each image: the heatmap's local maxima (3x3), best first.

        Args:
            out: ``[B, 4, G, G]`` network output.
        Returns:
            ``(boxes float64 [B, top, 3]`` input pixels, ``scores float64 [B, top]`` in ``[0, 1]``); rows past an
            image's maxima have score 0.
        """
        out = out.float()
        heat = torch.sigmoid(out[:, 0])
        peak = heat * (F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0] == heat)
        g = self.grid
        k = min(top, g * g)
        score, cell = peak.flatten(1).topk(k, dim=1)
        flat = out[:, 1:].flatten(2)
        at = torch.gather(flat, 2, cell[:, None, :].expand(-1, 3, -1))  # [B, 3, k]
        cx = ((cell % g).to(out.dtype) + 0.5 + at[:, 0]) * self.stride
        cy = ((cell // g).to(out.dtype) + 0.5 + at[:, 1]) * self.stride
        ext = torch.exp(at[:, 2]) * self.size
        boxes = torch.stack([cx, cy, ext], -1).double().cpu().numpy()
        return boxes, score.double().cpu().numpy()


def sample_frame(rng: np.random.Generator, cx: float, cy: float, extent: float, whole_pixels: bool = False):
    """A new frame around a face (the re-framing of training and of the robustness set): aspect ratio
    (width / height) log-uniform in ``ASPECT``, the face's extent a share ``FACE_SHARE`` of the long side (the frame
    grown where the face would not fit with a margin), the face box anywhere inside.

    Args:
        rng: the draws' generator. cx, cy, extent: the face box (``geometry.face_boxes``), any pixel units.
        whole_pixels: width and height rounded up and the corner down to whole pixels.
    Returns:
        ``(x0, y0, width, height)`` in the face box's units.
    """
    a = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
    long = extent / rng.uniform(*FACE_SHARE)
    w, h = (long, long / a) if a >= 1 else (long * a, long)
    grow = max(1.0, 1.15 * extent / min(w, h))
    w, h = w * grow, h * grow
    if whole_pixels:
        w, h = int(math.ceil(w)), int(math.ceil(h))
    lo_x, lo_y = cx + 0.575 * extent - w, cy + 0.575 * extent - h
    x0 = rng.uniform(lo_x, max(lo_x, cx - 0.575 * extent))
    y0 = rng.uniform(lo_y, max(lo_y, cy - 0.575 * extent))
    if whole_pixels:
        x0, y0 = int(math.floor(x0)), int(math.floor(y0))
    return x0, y0, w, h


def reframe_batch(images_u8: torch.Tensor, points: torch.Tensor, content: np.ndarray, size: int,
                  generator: torch.Generator, reframe: float = REFRAME, second_face: float = SECOND_FACE,
                  flip: bool = True, scale_jitter: float = 0.1):
    """Re-frame a batch of letterboxed training images (see the module docstring) and return their face boxes.

    Args:
        images_u8: ``uint8 [B, C, C, 3]`` letterboxed images (the localizer's crop cache).
        points: ``float32 [B, K, 2]`` landmarks in cache pixels (NaN = unknown).
        content: ``float64 [B, 4]`` the image's rectangle ``x0, y0, x1, y1`` inside each cache image (the rest is
            letterbox padding).
        size: the input side ``S``. generator: a CPU ``torch.Generator``; every draw comes from it.
    Returns:
        ``(images float32 [B, 3, S, S]`` in 0..255, ``boxes float32 [B, 2, 3]`` input pixels,
        ``present bool [B, 2]``): the labelled face first, the pasted one second.
    """
    b, c = images_u8.shape[0], images_u8.shape[1]
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    face = geometry.face_boxes(points.cpu().numpy())  # [B, 3] cache pixels
    m = np.zeros((b, 3, 3))
    m[:, 2, 2] = 1
    frame_rect = np.zeros((b, 4))
    fill = np.where(rng.random(b)[:, None] < 0.5, 0.0, rng.uniform(0, 255, (b, 3)))
    for i in range(b):
        cx, cy, e = face[i]
        if rng.random() < reframe and np.isfinite(e) and e > 1:
            x0, y0, w, h = sample_frame(rng, cx, cy, e)
        else:
            x0, y0, x1, y1 = content[i]
            w, h = x1 - x0, y1 - y0
            z = 1 + rng.uniform(-scale_jitter, scale_jitter)
            x0, y0, w, h = x0 + w * (1 - z) / 2, y0 + h * (1 - z) / 2, w * z, h * z
        k = size / max(w, h)
        ox, oy = (size - w * k) / 2, (size - h * k) / 2
        fl = flip and rng.random() < 0.5
        d = -1.0 if fl else 1.0
        m[i, 0, 0], m[i, 0, 2] = d / k, ((size if fl else 0.0) - ox) / k + x0
        m[i, 1, 1], m[i, 1, 2] = 1 / k, -oy / k + y0
        frame_rect[i] = (ox, oy, ox + w * k, oy + h * k)
    mt = torch.from_numpy(m)
    src = images_u8.permute(0, 3, 1, 2).float()
    ones = torch.zeros(b, 1, c, c)
    for i in range(b):  # the image's own pixels, as opposed to letterbox padding
        x0, y0, x1, y1 = content[i]
        ones[i, 0, max(0, int(math.floor(y0))): int(math.ceil(y1)), max(0, int(math.floor(x0))): int(math.ceil(x1))] = 1
    warped = augment.warp_images(torch.cat([src, ones.to(src.device)], 1), mt, size)
    img, inside = warped[:, :3], warped[:, 3:].clamp(0, 1)
    u = torch.arange(size, dtype=torch.float64) + 0.5
    fr = torch.from_numpy(frame_rect)
    in_frame = ((u[None, None, :] >= fr[:, 0, None, None]) & (u[None, None, :] < fr[:, 2, None, None])
                & (u[None, :, None] >= fr[:, 1, None, None]) & (u[None, :, None] < fr[:, 3, None, None]))
    in_frame = in_frame[:, None].to(img.dtype).to(img.device)
    fill_t = torch.from_numpy(fill).to(img.dtype).to(img.device)[:, :, None, None]
    img = img * inside + fill_t * (in_frame - inside).clamp_min(0)
    inv = np.linalg.inv(m)
    main = np.stack([inv[:, 0, 0] * face[:, 0] + inv[:, 0, 2], inv[:, 1, 1] * face[:, 1] + inv[:, 1, 2],
                     face[:, 2] * np.abs(inv[:, 0, 0])], 1)
    boxes = np.zeros((b, 2, 3))
    boxes[:, 0] = main
    present = np.zeros((b, 2), bool)
    present[:, 0] = np.isfinite(main).all(1) & (main[:, 2] > 1)
    # a second face: another image's face, smaller, further from the centre, not overlapping the first
    m2 = np.zeros((b, 3, 3))
    m2[:, 2, 2] = 1
    for i in range(b):
        j = (i + 1) % b
        if b < 2 or not present[i, 0] or rng.random() >= second_face or not np.isfinite(face[j]).all():
            continue
        e2 = main[i, 2] * rng.uniform(0.35, 0.8)
        fx0, fy0, fx1, fy1 = frame_rect[i]
        for _ in range(10):
            px, py = rng.uniform(fx0 + 0.6 * e2, fx1 - 0.6 * e2), rng.uniform(fy0 + 0.6 * e2, fy1 - 0.6 * e2)
            if not (np.isfinite(px) and np.isfinite(py)) or fx1 - fx0 < 1.2 * e2 or fy1 - fy0 < 1.2 * e2:
                break
            far = math.hypot(px - size / 2, py - size / 2) > math.hypot(main[i, 0] - size / 2, main[i, 1] - size / 2)
            apart = max(abs(px - main[i, 0]), abs(py - main[i, 1])) > 0.6 * (main[i, 2] + e2)
            if far and apart:
                s = face[j, 2] / e2
                m2[i, 0, 0], m2[i, 0, 2] = s, face[j, 0] - s * px
                m2[i, 1, 1], m2[i, 1, 2] = s, face[j, 1] - s * py
                boxes[i, 1] = (px, py, e2)
                present[i, 1] = True
                break
    if present[:, 1].any():
        sel = np.nonzero(present[:, 1])[0]
        donor = src[torch.from_numpy((sel + 1) % b)]
        pasted = augment.warp_images(donor, torch.from_numpy(m2[sel]), size)
        bx = torch.from_numpy(boxes[sel, 1])
        dx = (u[None, None, :] - bx[:, 0, None, None]) / (0.6 * bx[:, 2, None, None])
        dy = (u[None, :, None] - bx[:, 1, None, None]) / (0.7 * bx[:, 2, None, None])
        alpha = ((1 - dx ** 2 - dy ** 2) * 4).clamp(0, 1)[:, None].to(img.dtype).to(img.device)
        idx = torch.from_numpy(sel).to(img.device)
        img[idx] = img[idx] * (1 - alpha) + pasted * alpha
    return img, torch.from_numpy(boxes).float(), torch.from_numpy(present)


def content_rects(frames: np.ndarray, pad: int = 0) -> np.ndarray:
    """``float64 [N, 4]`` ``x0, y0, x1, y1``: where each image lies inside its letterbox crop (``frames``:
    ``float64 [N, 4]`` letterbox ``CropFrame`` rows, whose box is the square of side ``max(W, H)`` centred on the
    image, so ``W = side + 2 x0``), shifted by the cache border ``pad``."""
    f = np.asarray(frames, np.float64)
    k = f[:, 3] / f[:, 2]
    return np.stack([-f[:, 0] * k, -f[:, 1] * k, (f[:, 2] + f[:, 0]) * k, (f[:, 2] + f[:, 1]) * k], 1) + pad


@torch.no_grad()
def detect_crops(net, meta: dict, crops, device, batch_size: int = 128, tta_flip: bool = False):
    """The chosen face of each ready letterboxed crop.

    Args:
        net: a ``FaceBoxNet`` (or a callable with its input and output). meta: its checkpoint meta.
        crops: ``uint8 [N, S, S, 3]``.
        tta_flip: average the output with that of the mirrored crop (mapped back: columns reversed, x offsets
            negated) before decoding.
    Returns:
        ``(boxes float64 [N, 3]`` input pixels, ``scores float64 [N]``, ``faces int64 [N]``); see ``choose``.
    """
    from .data import network_input

    codec = FaceBoxCodec(int(meta["crop_size"]))
    out_b, out_s, out_n = [], [], []
    for s in range(0, len(crops), batch_size):
        x = network_input(crops[s: s + batch_size], meta["input_mean"], meta["input_std"], torch.device(device))
        out = net(x)
        if tta_flip:
            mirrored = torch.flip(net(torch.flip(x, dims=[3])), dims=[3])
            mirrored[:, 1] = -mirrored[:, 1]
            out = (out + mirrored) / 2
        b, sc, n = choose(*codec.decode(out))
        out_b.append(b), out_s.append(sc), out_n.append(n)
    if not out_b:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_n)


def predict_boxes_cache(net, meta: dict, crop_cache, indices, device="cpu") -> np.ndarray:
    """``float64 [n, 3]`` chosen face boxes in original pixels of the images ``indices`` of a letterbox
    ``cache.CropCache`` (crops sliced from its border)."""
    idx = np.asarray(indices)
    p, s = crop_cache.pad, crop_cache.size
    out = []
    for b in range(0, len(idx), 512):
        sel = idx[b: b + 512]
        order = np.argsort(sel, kind="stable")
        crops = np.empty((len(sel), s, s, 3), np.uint8)
        crops[order] = crop_cache.images[sel[order], p: p + s, p: p + s]
        boxes, _, _ = detect_crops(net, meta, crops, device)
        out.append(geometry.boxes_to_original(boxes, crop_cache.frames[sel]))
    return np.concatenate(out) if out else np.zeros((0, 3))
