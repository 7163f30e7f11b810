"""Batch augmentation: images and landmarks move together; flips re-index points; identity is exact."""

import torch
from augment_reference import identity_matrices, photometric  # noqa: E402

from landmarks_lib.data import augment


def _blob_images(points, sc, sigma=1.2):
    """Images [B, 3, sc, sc] with one Gaussian blob per point (pixel centres at i + 0.5)."""
    yy, xx = torch.meshgrid(torch.arange(sc) + 0.5, torch.arange(sc) + 0.5, indexing="ij")
    imgs = []
    for p in points:
        img = torch.zeros(sc, sc, dtype=torch.float64)
        for x, y in p:
            img += torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
        imgs.append(img)
    return torch.stack(imgs)[:, None].repeat(1, 3, 1, 1)


def _centroid(img, x, y, r=4):
    """Intensity centroid of channel 0 in a window around (x, y)."""
    h, w = img.shape[-2:]
    x0, x1 = max(0, int(x) - r), min(w, int(x) + r + 1)
    y0, y1 = max(0, int(y) - r), min(h, int(y) + r + 1)
    win = img[0, y0:y1, x0:x1]
    yy, xx = torch.meshgrid(torch.arange(y0, y1) + 0.5, torch.arange(x0, x1) + 0.5, indexing="ij")
    s = win.sum()
    return float((win * xx).sum() / s), float((win * yy).sum() / s)


def test_warped_blob_stays_under_its_landmark():
    size, pad = 48, 8
    sc = size + 2 * pad
    pts = torch.tensor([[[20.0, 22.0], [44.0, 30.0]], [[30.5, 40.25], [18.0, 16.0]]], dtype=torch.float64)
    imgs = _blob_images(pts, sc)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        m, flipped = augment.random_matrices(2, size, pad, g, rotate_deg=25, scale_jitter=0.2,
                                             translate_frac=0.05, flip=True)
        out = augment.warp_images(imgs, m, size)
        q = augment.warp_points(pts, m)  # no re-indexing: blob k stays with point k
        for b in range(2):
            for k in range(2):
                cx, cy = _centroid(out[b], *q[b, k].tolist())
                assert abs(cx - q[b, k, 0]) < 0.15 and abs(cy - q[b, k, 1]) < 0.15


def test_identity_is_exact_slice():
    size, pad = 16, 4
    imgs = torch.rand(2, 3, size + 2 * pad, size + 2 * pad)
    m = identity_matrices(2, pad)
    out = augment.warp_images(imgs, m, size)
    torch.testing.assert_close(out, imgs[:, :, pad:pad + size, pad:pad + size], atol=1e-5, rtol=0)  # float32 grid
    pts = torch.tensor([[[5.0, 7.0]], [[9.0, 1.0]]])
    torch.testing.assert_close(augment.warp_points(pts, m), pts - pad)


def test_flip_reindexes_points_with_the_permutation():
    size, pad = 32, 0
    g = torch.Generator().manual_seed(1)
    m, flipped = augment.random_matrices(64, size, pad, g, flip=True)
    assert 0 < int(flipped.sum()) < 64  # both cases drawn
    pts = torch.tensor([[[4.0, 10.0], [28.0, 10.0], [16.0, 20.0]]], dtype=torch.float64).repeat(64, 1, 1)
    perm = torch.tensor([1, 0, 2])
    q = augment.warp_points(pts, m, flipped, perm)
    # pure flips: mirrored left point becomes the new "left" label => identical coordinates for symmetric pairs
    f = flipped.nonzero()[0, 0]
    torch.testing.assert_close(q[f], pts[f])
    nf = (~flipped).nonzero()[0, 0]
    torch.testing.assert_close(q[nf], pts[nf])
    # a non-symmetric point is mirrored: x -> S - x
    one = torch.tensor([[[5.0, 3.0]]], dtype=torch.float64).repeat(64, 1, 1)
    q1 = augment.warp_points(one, m, flipped, torch.tensor([0]))
    torch.testing.assert_close(q1[f, 0, 0], torch.tensor(size - 5.0, dtype=torch.float64))


def test_draws_are_seeded_and_in_range():
    a = augment.random_matrices(8, 32, 4, torch.Generator().manual_seed(5), 10, 0.1, 0.05, True)
    b = augment.random_matrices(8, 32, 4, torch.Generator().manual_seed(5), 10, 0.1, 0.05, True)
    torch.testing.assert_close(a[0], b[0])
    lin = a[0][:, :2, :2]
    det = torch.linalg.det(lin).abs()
    # zoom in [0.9, 1.1] => |det| = 1 / zoom^2 in [0.826, 1.235]
    assert (det > 0.82).all() and (det < 1.24).all()


def test_photometric_changes_but_keeps_range():
    x = torch.rand(4, 3, 8, 8)
    y = photometric(x.clone(), 0.3, torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(x, y)
    torch.testing.assert_close(photometric(x.clone(), 0.0, torch.Generator()), x)
