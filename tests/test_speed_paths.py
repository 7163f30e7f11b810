"""The fast paths give the same results as the plain ones (equality on CPU; no timing assertions).

- ``io.read_landmarks``: the fast parser (np.loadtxt per group of lines) against the exact csv-module parser, on clean
  tables, on tables with every kind of bad row, and across read-block and group boundaries;
- the crop cache: slicing its crops gives ``geometry.crop_image``'s pixels, and the identity warp gives the slice;
- ``augment.photometric`` (one fused colour matrix) against its three-step definition;
- channels-last against contiguous model outputs;
- the DataLoader with 0 and 2 workers yields identical batches.
"""

import os
import random

import numpy as np
import pytest
import torch
from augment_reference import identity_matrices, normalize, photometric, to_input  # noqa: E402

from landmarks_lib.core import geometry, images
from landmarks_lib.data import augment, synthetic
from landmarks_lib.data import cache as cache_mod
from landmarks_lib.data import tables as lio
from landmarks_lib.data.loading import BatchSampler, make_loader
from landmarks_lib.models import landmark


# --------------------------------------------------------------------------------------------------- CSV parsing
def _header(k):
    return "\t".join(["file_name"] + [f"Point_{i}_{c}" for i in range(k) for c in "XY"])


def _outcome(fn, path, bad_rows, chunksize=20000):
    """What a parser returns (names, dtype, values, skipped) or the error message it raises."""
    try:
        names, points, skipped = fn(path, bad_rows, chunksize)
        return ("ok", names, points.dtype.str, points.shape, points.tolist(), skipped)
    except lio.DataFormatError as e:
        return ("error", str(e))


def _public(path, bad_rows, chunksize=20000):
    try:
        t = lio.read_landmarks(path, bad_rows, chunksize=chunksize)
        return ("ok", t.names, t.points.dtype.str, t.points.shape, t.points.tolist(), t.skipped)
    except lio.DataFormatError as e:
        return ("error", str(e))


def _fast_or_none(path, bad_rows, chunksize=20000):
    try:
        return _outcome(lio._read_landmarks_fast, path, bad_rows, chunksize)
    except lio._Unusual:
        return None


def test_fast_and_exact_parsers_agree_on_a_contest_like_table(tmp_path):
    rng = np.random.default_rng(0)
    k, n = 971, 300
    vals = rng.integers(-40, 700, size=(n, 2 * k))
    p = tmp_path / "landmarks.csv"
    p.write_text(_header(k) + "\n" + "".join(f"{i:06d}.jpg\t" + "\t".join(map(str, v)) + "\n"
                                             for i, v in enumerate(vals)))
    fast = _fast_or_none(p, "error")
    assert fast is not None, "a clean integer table must take the fast path"
    assert fast == _outcome(lio._read_landmarks_exact, p, "error")
    t = lio.read_landmarks(p)
    assert t.points.dtype == np.int16 and t.names == [f"{i:06d}.jpg" for i in range(n)]
    np.testing.assert_array_equal(t.points.reshape(n, -1), vals)


@pytest.mark.parametrize("read_bytes, group", [(1 << 16, 256), (7, 1), (40, 3)])
def test_fast_and_exact_parsers_agree_on_bad_and_odd_tables(tmp_path, monkeypatch, read_bytes, group):
    """Random small tables with every kind of trouble, each read by both parsers under both policies: the public
    reader's result (or error message) equals the exact parser's, and so does the fast parser's whenever it does
    not hand over to the exact one. Tiny read blocks and groups exercise every boundary."""
    monkeypatch.setattr(lio, "_READ_BYTES", read_bytes)
    monkeypatch.setattr(lio, "_GROUP_LINES", group)
    rnd = random.Random(read_bytes * 31 + group)
    odd = ["1.0", "1.5", "NaN", "", "abc", "40000", "-32768", "32767", "-0", "+5", " 7", "1e2", "inf", "1_000",
           "\u00a05", "\x1c5", "\u0663", '"5"']
    p = tmp_path / "l.csv"
    fast_used = 0
    for _ in range(150):
        k = rnd.choice([1, 2, 3])
        rows = []
        for i in range(rnd.randint(0, 10)):
            name = rnd.choice([f"{i}.jpg", f"{i % 3}.jpg", "", " ", "é.jpg"]) if rnd.random() < 0.2 else f"{i}.jpg"
            v = [str(rnd.randint(-50, 500)) for _ in range(2 * k)]
            if rnd.random() < 0.15:
                v[rnd.randrange(len(v))] = rnd.choice(odd)
            if rnd.random() < 0.05:
                v = v[:-1]
            if rnd.random() < 0.05:
                v = v + ["1"]
            line = "\t".join([name] + v)
            if rnd.random() < 0.04:
                line = rnd.choice(["", "  ", "\t", "x"])
            rows.append(line)
        text = _header(k) + "\n" + "\n".join(rows) + "\n"
        if rnd.random() < 0.1:
            text = text.replace("\n", "\r\n")
        if rnd.random() < 0.05:
            text = text.rstrip("\n") if rnd.random() < 0.5 else text + "\n\n"
        data = text.encode()
        if rnd.random() < 0.05:
            data = b"\xef\xbb\xbf" + data
        p.write_bytes(data)
        for bad_rows in ("error", "skip"):
            chunksize = rnd.choice([1, 2, 20000])
            want = _outcome(lio._read_landmarks_exact, p, bad_rows, chunksize)
            fast = _fast_or_none(p, bad_rows, chunksize)
            if fast is not None:
                fast_used += 1
                assert fast == want, (text, bad_rows)
            assert _public(p, bad_rows, chunksize) == want, (text, bad_rows)
    assert fast_used > 150  # most tables are handled (or rejected with the exact message) by the fast path


def test_fast_parser_hands_quoted_and_float_tables_to_the_exact_one(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text(_header(1) + '\n"a.jpg"\t1\t2\n')
    with pytest.raises(lio._Unusual):
        lio._read_landmarks_fast(p, "error", 100)
    assert lio.read_landmarks(p).names == ["a.jpg"]  # the csv module's unquoting
    p.write_text(_header(1) + "\na.jpg\t1\t2\nb.jpg\t1.5\t2\n")
    with pytest.raises(lio._Unusual):
        lio._read_landmarks_fast(p, "error", 100)
    assert lio.read_landmarks(p).points.dtype == np.float32


# --------------------------------------------------------------------------------------------------- crop cache
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed") / "data"
    info = synthetic.write_dataset(d, n_train=12, n_test=0, num_points=24, seed=3, min_size=72, max_size=110)
    table = lio.read_landmarks(info["train_landmarks"])
    return {"image_dir": os.path.join(str(d), "train", "images"), "names": table.names,
            "points": table.points.astype(np.float64), "cache_dir": str(tmp_path_factory.mktemp("cache"))}


@pytest.mark.parametrize("mode", ["center", "letterbox", "face"])
def test_cache_crops_equal_crop_image(tiny, mode):
    """Without a margin the cached crop is exactly ``geometry.crop_image`` of the decoded image."""
    c = cache_mod.get_cache(tiny["image_dir"], tiny["names"], mode, 40, tiny["cache_dir"], margin=0.0,
                            points=tiny["points"], num_workers=2, progress=False)
    assert c.pad == 0
    for i, name in enumerate(tiny["names"]):
        image = images.load_image(os.path.join(tiny["image_dir"], name))
        ref = geometry.crop_image(image, geometry.CropFrame.from_array(c.frames[i]))
        np.testing.assert_array_equal(c.images[i], ref)


@pytest.mark.parametrize("where", ["inside", "border"])
def test_cache_slice_with_margin_matches_crop_image(tiny, where):
    """With a margin, the slice ``[pad:pad+S]`` of the expanded crop samples the same points: equal up to one grey
    level of rounding, also where the box crosses the image border (``crop_image`` pads beyond the filter's
    support, so the resampling filter never meets an image edge)."""
    size, margin = 40, 0.125
    frames = []
    for name in tiny["names"]:
        w, h = images.image_size(os.path.join(tiny["image_dir"], name))
        if where == "inside":
            side = 0.5 * min(w, h)
            frames.append([(w - side) / 2, (h - side) / 2, side, size])
        else:  # letterbox-like box that leaves the image on two sides
            side = 1.1 * max(w, h)
            frames.append([-0.07 * w, -0.05 * h, side, size])
    c = cache_mod.get_cache(tiny["image_dir"], tiny["names"], "frames", size, tiny["cache_dir"], margin=margin,
                            frames=np.array(frames), num_workers=1, progress=False)
    assert c.pad == 5
    same = total = 0
    for i, name in enumerate(tiny["names"]):
        image = images.load_image(os.path.join(tiny["image_dir"], name))
        ref = geometry.crop_image(image, geometry.CropFrame.from_array(c.frames[i])).astype(int)
        got = np.asarray(c.images[i, c.pad: c.pad + size, c.pad: c.pad + size]).astype(int)
        assert np.abs(got - ref).max() <= 1
        same += int((got == ref).sum())
        total += ref.size
    assert same / total > 0.98


def test_identity_warp_equals_slicing(tiny):
    c = cache_mod.get_cache(tiny["image_dir"], tiny["names"], "face", 40, tiny["cache_dir"], margin=0.125,
                            points=tiny["points"], num_workers=1, progress=False)
    x = to_input(torch.from_numpy(np.array(c.images)), torch.device("cpu"))
    warped = augment.warp_images(x, identity_matrices(len(x), c.pad), 40)
    torch.testing.assert_close(warped, x[:, :, c.pad: c.pad + 40, c.pad: c.pad + 40], rtol=0, atol=2e-5)


def test_loader_with_0_and_2_workers_yields_identical_batches(tiny):
    c = cache_mod.get_cache(tiny["image_dir"], tiny["names"], "face", 40, tiny["cache_dir"], margin=0.125,
                            points=tiny["points"], num_workers=1, progress=False)
    batches = {}
    for workers in (0, 2):
        sampler = BatchSampler(np.arange(len(c)), 5, shuffle=True, seed=4, drop_last=False)
        sampler.set_epoch(1)
        batches[workers] = list(make_loader(c, sampler, torch.device("cpu"), num_workers=workers))
    assert len(batches[0]) == len(batches[2]) == 3
    for a, b in zip(batches[0], batches[2]):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------------- augmentation
def _photometric_reference(images, strength, generator):
    """The three-step definition (brightness, contrast with the mean grey level, saturation with greyscale)."""
    b = images.shape[0]
    f = (1 + (torch.rand((b, 3), generator=generator) * 2 - 1) * strength).to(images.dtype)
    x = images * f[:, 0, None, None, None]
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * f[:, 1, None, None, None] + mean
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - grey) * f[:, 2, None, None, None] + grey
    return x.clamp_(0, 1)


@pytest.mark.parametrize("strength", [0.2, 0.9])
def test_fused_photometric_equals_its_definition(strength):
    x = torch.rand(6, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    got = photometric(x.clone(), strength, torch.Generator().manual_seed(5))
    want = _photometric_reference(x.clone(), strength, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)  # float32 rounding of another summation order
    assert not torch.allclose(got, x)


# --------------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_channels_last_matches_contiguous_on_cpu(backbone):
    """Same weights, same input in both memory formats: outputs equal to float32 rounding (relative 1e-4 of the
    output scale; oneDNN may pick other kernels, hence not bit-exact) in eval and train mode."""
    torch.manual_seed(0)
    model = landmark.build_model(backbone, 8, pretrained=False)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for train in (False, True):
        model.train(train)
        with torch.no_grad():
            a = model.to(memory_format=torch.contiguous_format)(x)
            b = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        tol = 1e-4 * float(a.abs().max()) + 1e-7
        torch.testing.assert_close(a, b, rtol=1e-4, atol=tol)


@pytest.mark.parametrize("strength", [0.0, 0.3])
def test_color_normalize_equals_scale_jitter_then_normalize(strength):
    """The one-pass ``color_normalize`` on raw 0..255 values equals /255, the photometric definition and
    ``normalize`` (augment_reference) applied one after the other (and plain /255 + normalize without jitter)."""
    raw = torch.randint(0, 256, (5, 3, 18, 22), generator=torch.Generator().manual_seed(3)).float()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = augment.color_normalize(raw.clone(), mean, std, strength, torch.Generator().manual_seed(9), 1 / 255.0)
    x = raw / 255.0
    if strength:
        x = _photometric_reference(x, strength, torch.Generator().manual_seed(9))
    want = normalize(x, mean, std)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    if strength:  # the clamp to [0, 1] happened in normalised units
        assert float(got[:, 0].min()) >= -0.485 / 0.229 - 1e-5 and float(got[:, 0].max()) <= 0.515 / 0.229 + 1e-5
        assert not torch.allclose(got, normalize(raw / 255.0, mean, std))


def test_separable_affine_grid_equals_torch():
    theta = torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for size in (1, 5, 32):
        want = torch.nn.functional.affine_grid(theta, [7, 3, size, size], align_corners=False)
        torch.testing.assert_close(augment.affine_grid(theta, size), want, rtol=0, atol=1e-12)


def test_closed_form_affine_inverse():
    m, _ = augment.random_matrices(16, 40, 5, torch.Generator().manual_seed(2), 30.0, 0.3, 0.2, flip=True)
    inv = augment.affine_inverse(m)
    torch.testing.assert_close(inv, torch.linalg.inv(m), rtol=0, atol=1e-12)
    torch.testing.assert_close(inv @ m, torch.eye(3, dtype=torch.float64).expand(16, 3, 3), rtol=0, atol=1e-12)


def test_prepare_batch_equals_the_step_by_step_definition(tiny):
    """``engine.prepare_batch`` (fused) against to_input -> warp -> points -> photometric -> normalize."""
    from landmarks_lib.core import params
    from landmarks_lib.data.loading import CacheBatches
    from landmarks_lib.training import engine

    c = cache_mod.get_cache(tiny["image_dir"], tiny["names"], "face", 40, tiny["cache_dir"], margin=0.125,
                            points=tiny["points"], num_workers=1, progress=False)
    k = c.points.shape[1]
    perm = torch.as_tensor(np.arange(k)[::-1].copy())
    p = params.resolve(overrides={"photometric": 0.3, "rotate_deg": 20.0})
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = CacheBatches(c)[np.arange(len(c))]
    unmatched = torch.tensor([0, k - 1])  # a pair that perm maps onto each other
    x, pts = engine.prepare_batch(batch, p, torch.device("cpu"), 40, c.pad, mean, std,
                                  torch.Generator().manual_seed(4), perm, False, unmatched)
    g = torch.Generator().manual_seed(4)
    m, flipped = augment.random_matrices(len(c), 40, c.pad, g, 20.0, p["scale_jitter"], p["translate_frac"], True)
    assert flipped.any() and not flipped.all()
    ref = augment.warp_images(to_input(batch["images"], torch.device("cpu")), m, 40)
    ref = normalize(_photometric_reference(ref, 0.3, g), mean, std)
    torch.testing.assert_close(x, ref, rtol=0, atol=3e-5)
    inv = torch.linalg.inv(m)
    want = batch["points"].double() @ inv[:, :2, :2].transpose(1, 2) + inv[:, None, :2, 2]
    want[flipped] = want[flipped][:, perm]
    want[torch.nonzero(flipped).flatten()[:, None], unmatched[None, :]] = float("nan")  # unknown after a flip
    torch.testing.assert_close(pts.double(), want, rtol=0, atol=1e-4, equal_nan=True)
    assert int(torch.isnan(pts).any(-1).sum()) == 2 * int(flipped.sum())
    x0, pts0 = engine.prepare_batch(batch, {**p, "augment": False}, torch.device("cpu"), 40, c.pad, mean, std)
    torch.testing.assert_close(x0, normalize(to_input(batch["images"], torch.device("cpu"))[
        :, :, c.pad: c.pad + 40, c.pad: c.pad + 40], mean, std), rtol=0, atol=2e-6)
    torch.testing.assert_close(pts0, batch["points"] - c.pad)
