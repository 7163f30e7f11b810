"""Crop frames, the crop round trip, image resampling placement, affine maps and the mirror permutation."""

import numpy as np
import pytest
from floats import assert_close

from landmarks_lib.core import geometry
from landmarks_lib.data import symmetry


@pytest.mark.parametrize("mode", ["center", "letterbox", "face"])
@pytest.mark.parametrize("wh", [(200, 150), (97, 311), (128, 128)])
def test_crop_round_trip_within_1e4_px(mode, wh):
    rng = np.random.default_rng(0)
    w, h = wh
    pts = rng.uniform([-10, -10], [w + 10, h + 10], size=(50, 2))
    frame = geometry.make_frame(mode, w, h, 96, points=pts)
    back = frame.to_original(frame.to_crop(pts))
    assert np.abs(back - pts).max() < 1e-4
    # vectorised versions agree with the frame object
    fr = frame.as_array()[None]
    np.testing.assert_allclose(geometry.frames_to_crop(pts[None], fr)[0], frame.to_crop(pts))
    assert_close(geometry.frames_to_original(frame.to_crop(pts)[None], fr)[0], pts, ulps=64)
    assert geometry.CropFrame.from_array(frame.as_array()) == frame


def test_centre_and_letterbox_frames():
    f = geometry.center_frame(200, 100, 50)
    assert (f.x0, f.y0, f.side, f.size) == (50.0, 0.0, 100.0, 50)
    # the image centre maps to the crop centre
    np.testing.assert_allclose(f.to_crop([100, 50]), [25, 25])
    lb = geometry.letterbox_frame(200, 100, 50)
    assert (lb.x0, lb.y0, lb.side) == (0.0, -50.0, 200.0)
    np.testing.assert_allclose(lb.to_crop([[0, 0], [200, 100]]), [[0, 12.5], [50, 37.5]])


def test_face_frame_contains_points_and_ignores_nan():
    pts = np.array([[10, 20], [50, 40], [np.nan, np.nan], [30, 70]], float)
    f = geometry.face_frame(pts, 64, face_scale=1.25)
    q = f.to_crop(pts[[0, 1, 3]])
    assert (q >= 0).all() and (q <= 64).all()
    assert f.side == pytest.approx(50 * 1.25)
    with pytest.raises(ValueError, match="no finite"):
        geometry.face_frame(np.full((3, 2), np.nan), 64)
    with pytest.raises(ValueError, match="unknown crop_mode"):
        geometry.make_frame("zoom", 10, 10, 8)
    with pytest.raises(ValueError, match="needs landmarks"):
        geometry.make_frame("face", 10, 10, 8)


def test_expand_keeps_crop_at_integer_offset():
    f = geometry.CropFrame(10.0, 20.0, 80.0, 64)
    big = f.expand(0.125)
    pad = (big.size - f.size) // 2
    assert big.size == 64 + 2 * 8 and pad == 8
    p = np.array([[30.0, 45.0]])
    np.testing.assert_allclose(big.to_crop(p), f.to_crop(p) + pad)


def test_crop_image_places_a_dot_under_its_point():
    """A single bright pixel must stay under its point after cropping (continuous convention)."""
    img = np.zeros((120, 160, 3), np.uint8)
    i, j = 101, 37  # column, row
    img[j, i] = 255
    centre = np.array([i + 0.5, j + 0.5])
    for frame in (geometry.CropFrame(80.0, 10.0, 60.0, 60),      # 1:1
                  geometry.CropFrame(80.0, 10.0, 30.0, 90),      # 3x upscale
                  geometry.letterbox_frame(160, 120, 160)):      # with padding
        crop = geometry.crop_image(img, frame).astype(float).sum(-1)
        q = frame.to_crop(centre)
        yy, xx = np.mgrid[0: crop.shape[0], 0: crop.shape[1]]
        cx = (crop * (xx + 0.5)).sum() / crop.sum()
        cy = (crop * (yy + 0.5)).sum() / crop.sum()
        assert abs(cx - q[0]) < 0.05 and abs(cy - q[1]) < 0.05, (frame, cx, cy, q)


def test_crop_image_outside_is_black_and_shape():
    img = np.full((10, 20, 3), 200, np.uint8)
    out = geometry.crop_image(img, geometry.CropFrame(-40.0, -40.0, 20.0, 8))  # filter support stays outside
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out.max() == 0


def test_apply_affine_round_trip():
    a = np.deg2rad(17.0)
    m = np.array([[1.3 * np.cos(a), -1.3 * np.sin(a), 4.0], [1.3 * np.sin(a), 1.3 * np.cos(a), -2.0], [0, 0, 1]])
    pts = np.random.default_rng(1).uniform(0, 64, (20, 2))
    back = geometry.apply_affine(np.linalg.inv(m), geometry.apply_affine(m, pts))
    assert np.abs(back - pts).max() < 1e-9
    flip = np.array([[-1.0, 0, 64], [0, 1, 0], [0, 0, 1]])  # x -> W - x, the package's continuous convention
    np.testing.assert_allclose(geometry.apply_affine(flip, [[10.0, 5.0]]), [[54.0, 5.0]])


def _symmetric_layout():
    """A mirror-symmetric point layout with known pairs, 3 midline points."""
    left = np.array([[-3.0, -2.0], [-2.0, -1.5], [-1.0, 0.5], [-2.5, 2.0], [-1.5, 3.0]])
    mid = np.array([[0.0, -2.5], [0.0, 0.5], [0.0, 3.5]])
    right = left * [-1, 1]
    pts = np.concatenate([left, mid, right])
    perm = np.concatenate([np.arange(8, 13), np.arange(5, 8), np.arange(0, 5)])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pts))  # shuffle indices so the layout is "undocumented"
    inv = np.argsort(order)
    return pts[order], inv[perm[order]]


def test_mirror_permutation_recovered_from_tilted_noisy_shapes():
    base, truth = _symmetric_layout()
    rng = np.random.default_rng(2)
    shapes = []
    for _ in range(200):
        a = np.deg2rad(8.0)  # every face tilted the same way: the mean shape is not upright
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        s = base @ r.T * rng.uniform(20, 40) + rng.uniform(50, 100, 2) + rng.normal(0, 0.2, base.shape)
        shapes.append(s)
    perm = symmetry.estimate_mirror_permutation(np.array(shapes))
    assert np.array_equal(perm[perm], np.arange(len(perm)))
    assert np.array_equal(perm, truth)
    assert symmetry.mirror_error(np.array(shapes), perm) < 0.05
    wrong = perm.copy()
    wrong[[0, perm[0]]] = [0, perm[0]]
    assert symmetry.mirror_error(np.array(shapes), wrong) > symmetry.mirror_error(np.array(shapes), perm)


def test_points_without_a_mirror_partner_are_found():
    """A symmetric layout plus two points without partners (one each side, not mirror images of each other): the
    permutation pairs them somehow, and ``mirror_unmatched`` names exactly them; the symmetric points keep their
    true partners and residuals near 0."""
    base, truth = _symmetric_layout()
    extra = np.array([[-2.8, 0.0], [1.9, 1.2]])
    layout = np.concatenate([base, extra])
    rng = np.random.default_rng(4)
    shapes = np.array([layout * rng.uniform(20, 40) + rng.uniform(50, 100, 2) + rng.normal(0, 0.1, layout.shape)
                       for _ in range(100)])
    perm = symmetry.estimate_mirror_permutation(shapes)
    assert np.array_equal(perm[perm], np.arange(len(perm)))
    res = symmetry.mirror_residuals(shapes, perm)
    bad = symmetry.mirror_unmatched(shapes, perm)
    assert set(bad) >= {len(base), len(base) + 1}
    assert set(bad) == set(perm[bad])  # closed under the permutation
    good = np.setdiff1d(np.arange(len(layout)), bad)
    assert np.array_equal(perm[good], truth[good]) and res[good].max() < 0.02
    assert res[len(base):].min() > symmetry.MIRROR_TOLERANCE
    assert symmetry.mirror_error(shapes, perm) == pytest.approx(float(np.sqrt((res ** 2).mean())))
