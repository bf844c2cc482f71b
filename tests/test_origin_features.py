"""Transformation features and caption statistics (audit.analyses.origin.features): hand-computed values and cross-checks."""
import numpy as np
import pytest
from PIL import Image

from audit.analyses.origin import features as F


def _img(arr):
    return Image.fromarray(np.asarray(arr, dtype=np.uint8))


def test_mean_rgb_half_red_half_blue():
    a = np.zeros((10, 10, 3), np.uint8)
    a[:, :5, 0] = 255
    a[:, 5:, 2] = 255
    assert F.mean_rgb(a).tolist() == [0.5, 0.0, 0.5]


def test_color_histogram_bins():
    a = np.zeros((4, 4, 3), np.uint8)
    a[..., 0] = 255                      # pure red: r bin 3, g 0, b 0 -> flat index 3*16 = 48
    h = F.color_histogram(a)
    assert h.shape == (64,) and h[48] == 1.0 and h.sum() == 1.0
    a[:2] = [64, 128, 191]               # bins (1, 2, 2) -> 16 + 8 + 2 = 26 for half the pixels
    h = F.color_histogram(a)
    assert h[26] == 0.5 and h[48] == 0.5


def test_ideal_masks_are_complementary_and_radius_inclusive():
    low, high = F.ideal_mask(224, 224, 40, "low"), F.ideal_mask(224, 224, 40, "high")
    assert np.array_equal(low + high, np.ones((224, 224)))
    c = 112
    assert low[c, c + 40] == 1 and low[c, c + 41] == 0      # d <= 40 kept by the low-pass
    assert low[c + 24, c + 32] == 1                          # d = 40 exactly (24² + 32² = 40²)
    # number of lattice points in the closed disc of radius 40 (Gauss circle count, computed directly)
    ii, jj = np.meshgrid(np.arange(-112, 112), np.arange(-112, 112), indexing="ij")
    assert low.sum() == int((ii ** 2 + jj ** 2 <= 1600).sum())
    with pytest.raises(ValueError):
        F.ideal_mask(8, 8, 2, "band")


def test_fft_filters_split_cosines_by_frequency():
    """A sum of a 10-cycle and a 60-cycle cosine: the low-pass keeps exactly the first, the high-pass the
    second (an independent construction of the expected images)."""
    xx = np.arange(224)[None, :].repeat(224, axis=0)
    slow = 0.3 * np.cos(2 * np.pi * 10 * xx / 224)
    fast = 0.2 * np.cos(2 * np.pi * 60 * xx / 224)
    img = 0.5 + slow + fast
    lo = F.fft_filter(img, 40, "low", normalise=False)
    hi = F.fft_filter(img, 40, "high", normalise=False)
    assert np.allclose(lo, 0.5 + slow, atol=1e-10)
    assert np.allclose(hi, fast, atol=1e-10)
    assert np.allclose(lo + hi, img, atol=1e-10)
    # the paper's output normalisation: (x - min) / (max - min + 1e-5)
    n = F.fft_filter(img, 40, "low")
    expect = (lo - lo.min()) / (lo.max() - lo.min() + 1e-5)
    assert np.allclose(n, expect)


def test_constant_image_filters_to_zero():
    g = np.full((224, 224), 0.7)
    assert np.allclose(F.fft_filter(g, 40, "low"), 0.0, atol=1e-6)
    assert np.allclose(F.fft_filter(g, 40, "high"), 0.0, atol=1e-6)


def test_pool_mean_and_mad():
    x = np.zeros((4, 4))
    x[:2, :2] = 1.0
    assert F.pool(x, 2).tolist() == [1.0, 0.0, 0.0, 0.0]
    # mean |x - 0.25|: 0.75 in the bright cell, 0.25 elsewhere
    assert F.pool(x, 2, stat="mad").tolist() == [0.75, 0.25, 0.25, 0.25]
    with pytest.raises(ValueError):
        F.pool(np.zeros((5, 4)), 2)


def test_edges_only_on_the_square_boundary():
    g = np.zeros((224, 224))
    g[56:168, 56:168] = 1.0                  # a square filling the 4 central cells of the 8x8 grid (28 px each)
    e = F.edge_features(g)
    cells = e[:64].reshape(8, 8)
    assert e[64] > 0 and cells[0, 0] == 0 and cells[7, 7] == 0
    assert cells[2, 2] > 0                   # the square's corner lies in cell (2, 2)
    assert cells[3:5, 3:5].sum() == 0        # the inside of the square has no edges


def test_image_features_shapes_and_eval_view():
    rng = np.random.default_rng(0)
    img = _img(rng.integers(0, 256, (300, 500, 3)))
    rgb = F.eval_view(img)
    assert rgb.shape == (224, 224, 3)
    out = F.image_features(img)
    assert {k: v.shape[0] for k, v in out.items()} == F.IMAGE_FAMILY_DIMS
    assert all(np.isfinite(v).all() for v in out.values())
    with pytest.raises(ValueError):
        F.image_features(img, ["sift"])


def test_grey_is_itu_601_luma_like_pil():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    pil = np.asarray(Image.fromarray(a).convert("L"), dtype=np.float64) / 255.0
    assert np.abs(F.to_grey(a) - pil).max() <= 1 / 255 + 1e-12   # PIL rounds to integers


def test_caption_stats_by_hand():
    s = F.caption_stats(["a cat", "IMG_1234", "", "The the cat, 2 cats!"])
    assert s[0].tolist() == [5, 2, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert s[1].tolist() == [8, 1, 8.0, 1.0, 1.0, 0.5, 0.125, 0.0, 1.0]
    assert s[2].tolist() == [0.0] * len(F.CAPTION_STATS)
    # 20 chars, 5 words (lengths 3,3,4,1,5 -> 3.2), distinct lower {the, cat,, 2, cats!} = 4 -> 0.8,
    # upper 1 of 13 letters, 1 digit, 2 punctuation marks
    r = s[3]
    assert r[0] == 20 and r[1] == 5 and r[2] == pytest.approx(3.2) and r[3] == pytest.approx(0.8)
    assert r[4] == pytest.approx(1 / 13) and r[5] == pytest.approx(1 / 20) and r[6] == pytest.approx(2 / 20)
    assert F.caption_stats(["фото кошки"])[0][7] == pytest.approx(9 / 10)
