"""Networks rebuilt from what a checkpoint or a model part stores (``meta`` and ``state_dict``)."""

from __future__ import annotations

import torch

from . import codecs, facebox, landmark


def network(part: dict, device="cpu") -> torch.nn.Module:
    """Rebuild the network of a stage checkpoint or of a model part (``{"meta", "state_dict"}``), eval mode, on
    ``device`` (no pretrained download: the weights are in the file)."""

    meta = part["meta"]
    if meta.get("head") == codecs.HEAD:
        net = facebox.build_localizer(meta["backbone"], pretrained=False)
        net.load_state_dict(part["state_dict"])
        return net.to(device).eval()
    net = landmark.build_model(meta["backbone"], meta["num_points"], pretrained=False, dropout=meta.get("dropout", 0),
                             head=meta.get("head", "linear"), crop_size=meta["crop_size"])
    net.load_state_dict(part["state_dict"])
    return net.to(device).eval()
