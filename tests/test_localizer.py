"""The face-box localizer (codec, choice rule, re-framing) and the robustness set."""

import numpy as np
import pytest
import torch
from floats import assert_close

from landmarks_lib.core import geometry
from landmarks_lib.data import reframing
from landmarks_lib.evaluation import robustness as R
from landmarks_lib.models import codecs, facebox


def _perfect_output(codec, target, boxes, present):
    """The network output that encodes ``boxes`` exactly (logit 10 at each face's cell, -10 elsewhere)."""
    b = boxes.shape[0]
    out = torch.full((b, 4, codec.grid, codec.grid), -10.0)
    for i in range(b):
        for f in range(boxes.shape[1]):
            if present[i, f]:
                c = int(target["cell"][i, f])
                flat = out[i].view(4, -1)
                flat[0, c] = 10.0 + f * -0.5  # the first face scores higher
                flat[1, c], flat[2, c] = target["offset"][i, f]
                flat[3, c] = target["log_size"][i, f]
    return out


def test_codec_round_trip_and_choice_never_averages():
    codec = codecs.FaceBoxCodec(96)
    boxes = torch.tensor([[[30.2, 40.7, 50.0], [80.0, 15.0, 20.0]], [[47.9, 48.1, 70.0], [0, 0, 0]]])
    present = torch.tensor([[True, True], [True, False]])
    target = codec.encode(boxes, present)
    assert target["heat"].shape == (2, 6, 6) and float(target["heat"].max()) == pytest.approx(1.0)
    out = _perfect_output(codec, target, boxes, present)
    dec, scores = codec.decode(out.numpy())
    np.testing.assert_allclose(dec[0, :2], boxes[0].numpy(), atol=1e-4)
    box, score, faces = codecs.choose(dec, scores)
    assert faces.tolist() == [2, 1]
    # the larger face wins; the chosen box is one detection, not a mix of two
    np.testing.assert_allclose(box, boxes[:, 0].numpy(), atol=1e-4)
    # ... also when the smaller one scores higher
    sc2 = scores.copy()
    sc2[0, :2] = [0.6, 0.9]
    np.testing.assert_allclose(codecs.choose(dec, sc2)[0][0], dec[0, 0])
    # a face under half the best score does not count: the confident smaller face wins
    sc2[0, :2] = [0.2, 0.9]
    b2, _, n2 = codecs.choose(dec, sc2)
    np.testing.assert_allclose(b2[0], dec[0, 1])
    assert n2[0] == 1


def test_loss_is_lower_for_the_true_boxes():
    codec = codecs.FaceBoxCodec(64)
    boxes = torch.tensor([[[20.0, 30.0, 25.0], [0, 0, 0]]])
    present = torch.tensor([[True, False]])
    target = codec.encode(boxes, present)
    good = _perfect_output(codec, target, boxes, present)
    bad = torch.roll(good, shifts=2, dims=3)
    assert float(facebox.facebox_loss(good, target)) < float(facebox.facebox_loss(bad, target)) / 10


def test_boxes_to_original_inverts_the_letterbox():
    frame = geometry.letterbox_frame(300, 200, 96)
    truth = np.array([[150.0, 80.0, 90.0]])
    in_input = np.array([[(150 - frame.x0) * frame.scale, (80 - frame.y0) * frame.scale, 90 * frame.scale]])
    assert_close(geometry.boxes_to_original(in_input, frame.as_array()[None]), truth, ulps=64)
    rect = reframing.content_rects(frame.as_array()[None])[0]
    assert_close(rect, [0, (96 - 64) / 2, 96, (96 + 64) / 2])
    fr = geometry.box_frames(truth, 112, 1.15)[0]
    ref = geometry.face_frame(np.array([[105.0, 35.0], [195.0, 125.0]]), 112, 1.15)
    assert_close(fr, ref.as_array())


def _letterbox_batch(n=12, c=64, seed=0):
    rng = np.random.default_rng(seed)
    imgs = torch.from_numpy(rng.integers(0, 255, (n, c, c, 3), dtype=np.uint8))
    centre = rng.uniform(24, 40, (n, 1, 2))
    pts = torch.from_numpy((centre + rng.uniform(-12, 12, (n, 30, 2))).astype(np.float32))
    content = np.tile([0.0, 8.0, c, c - 8.0], (n, 1))
    return imgs, pts, content


def test_reframe_batch_is_seeded_and_keeps_the_faces_in_the_frame():
    imgs, pts, content = _letterbox_batch()
    run = lambda s: reframing.reframe_batch(imgs, pts, content, 64, torch.Generator().manual_seed(s), second_face=1.0)  # noqa
    a, b = run(3), run(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], run(4)[0])
    img, boxes, present = a
    assert img.shape == (12, 3, 64, 64) and bool(present[:, 0].all()) and bool(present[:, 1].any())
    main = boxes[:, 0].numpy()
    assert (main[:, :2] - main[:, 2:] / 2 >= -1e-3).all() and (main[:, :2] + main[:, 2:] / 2 <= 64 + 1e-3).all()
    for i in np.nonzero(present[:, 1].numpy())[0]:
        m, s = main[i], boxes[i, 1].numpy()
        assert s[2] < m[2]  # smaller
        assert np.hypot(*(s[:2] - 32)) > np.hypot(*(m[:2] - 32))  # further from the centre
        assert max(abs(s[0] - m[0]), abs(s[1] - m[1])) > 0.5 * (s[2] + m[2])  # not overlapping


def test_reframe_without_reframing_is_the_letterbox():
    imgs, pts, content = _letterbox_batch(n=4)
    content = np.tile([0.0, 0.0, 64.0, 64.0], (4, 1))
    img, boxes, _ = reframing.reframe_batch(imgs, pts, content, 64, torch.Generator().manual_seed(0), reframe=0.0,
                                    second_face=0.0, flip=False, scale_jitter=0.0)
    np.testing.assert_allclose(img.numpy(), imgs.permute(0, 3, 1, 2).float().numpy(), atol=1e-3)
    np.testing.assert_allclose(boxes[:, 0].numpy(), geometry.face_boxes(pts.numpy()), atol=1e-3)


def test_trunk_stride_and_output_shape():
    net = facebox.build_localizer("resnet18")
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 4, 4, 4)
    net = facebox.build_localizer("mobilenet_v2")
    assert net.eval()(torch.zeros(1, 3, 96, 96)).shape == (1, 4, 6, 6)
    with pytest.raises(ValueError, match="multiple of 16"):
        codecs.FaceBoxCodec(100)


# ------------------------------------------------------------------------------------------- robustness set
def _faces(n=6, seed=1):
    rng = np.random.default_rng(seed)
    images, points = [], []
    for _ in range(n):
        h, w = rng.integers(80, 160, 2)
        images.append(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        c = np.array([w, h]) / 2 + rng.uniform(-10, 10, 2)
        points.append((c + rng.uniform(-25, 25, (40, 2))).astype(np.float32))
    return images, np.stack(points)


def test_robustness_draws_are_seeded_and_keep_the_face_one_to_one():
    images, points = _faces()
    r1, r2 = R.draw(points), R.draw(points)
    assert r1 == r2 and R.draw(points, seed=1) != r1
    for i, r in enumerate(r1):
        out, pts = R.render(images[i], points[i], r, images[r.donor] if r.donor >= 0 else None,
                            points[r.donor] if r.donor >= 0 else None)
        assert out.shape == (r.height, r.width, 3)
        np.testing.assert_allclose(pts, points[i] - [r.x0, r.y0], atol=1e-4)
        lo, hi = np.floor(pts.min(0)).astype(int), np.ceil(pts.max(0)).astype(int)
        assert (lo >= 0).all() and hi[0] <= r.width and hi[1] <= r.height  # the face stays in the frame
        if r.donor < 0:  # the face's pixels are the image's own, shifted by the frame's integer origin
            y, x = int(points[i][0, 1]), int(points[i][0, 0])
            np.testing.assert_array_equal(out[y - r.y0, x - r.x0], images[i][y, x])
        long = max(r.width, r.height)
        extent = (points[i].max(0) - points[i].min(0)).max()
        assert extent / long <= reframing.FACE_SHARE[1] + 1e-6


def test_off_face_counts_missed_and_wrongly_sized_crops():
    truth = np.array([[[10.0, 10.0], [30.0, 30.0], [20.0, 20.0]]] * 3)
    side = 20 * 1.15
    ok = [20 - side / 2, 20 - side / 2, 20 + side / 2, 20 + side / 2]
    far = [60, 60, 60 + side, 60 + side]
    huge = [20 - side, 20 - side, 20 + side, 20 + side]  # 2x the labelled face's side
    assert R.off_face(np.array([ok, far, huge]), truth, 1.15).tolist() == [False, True, True]


def test_robustness_set_subset_is_seeded(tmp_path):
    from PIL import Image

    images, points = _faces(8)
    names = []
    for i, im in enumerate(images):
        names.append(f"{i}.png")
        Image.fromarray(im).save(tmp_path / names[-1])
    a = R.RobustnessSet(tmp_path, names, points, max_images=5)
    b = R.RobustnessSet(tmp_path, names, points, max_images=5)
    assert len(a) == 5 and a.names == b.names and a.names == sorted(a.names, key=names.index)
    img, pts = a.item(0)
    np.testing.assert_allclose(a.points()[0], pts)
