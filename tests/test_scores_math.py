"""Score maths on 3–6 hand-made rows (numbers computed on paper) plus an independent second computation."""
import math

import numpy as np
import pytest
import torch

from audit.scores.basic import basic_columns
from audit.scores.image_based import assign, caption_prefilter, kmeans, target_clusters
from audit.scores.laion import laion_columns
from audit.scores.negclip import batch_lse_terms, equal_batches, negclip_batch, negclip_scores
from audit.scores.normsim import normsim_2, normsim_2_direct, normsim_direct, normsim_inf
from audit.scores.vas import second_moment, vas, vas_d, vas_low_rank

E1, E2, E3 = np.eye(3, dtype=np.float32)


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- negclip -------------------------------------------------------------------------------------
def test_negclip_orthonormal_pairs_by_hand():
    # f_i = g_i = e_i: S = I, each row/column logsumexp = log(e^{1/τ} + (n−1)); negclip = 1 − τ·that
    tau = 0.5
    img = np.eye(3, dtype=np.float32)
    got = negclip_scores(img, img.copy(), tau=tau, batch_size=3, k=1, rng=np.random.default_rng(0))
    want = -tau * math.log(1 + 2 * math.exp(-1 / tau))          # = −0.5·ln(1.270671) = −0.119772
    assert got == pytest.approx([want] * 3, abs=1e-6)
    assert want == pytest.approx(-0.119772, abs=1e-6)


def test_negclip_mismatched_pair_by_hand():
    # rows: (e1, e1) matched, (e2, e3) mismatched; d = 3, τ = 1 -> S = [[1, 0], [0, 0]]
    img = np.stack([E1, E2])
    txt = np.stack([E1, E3])
    got = negclip_scores(img, txt, tau=1.0, batch_size=2, k=1, rng=np.random.default_rng(0))
    r0 = 0.5 * (math.log(math.e + 1) + math.log(math.e + 1))    # row 0: [1, 0]; column 0: [1, 0]
    r1 = 0.5 * (math.log(2) + math.log(2))                      # row 1: [0, 0]; column 1: [0, 0]
    assert got == pytest.approx([1 - r0, 0 - r1], abs=1e-6)


def test_negclip_one_batch_equals_minus_tau_symmetric_infonce():
    rng = np.random.default_rng(1)
    f, g = unit(rng, 6, 5), unit(rng, 6, 5)
    tau = 0.07
    ft, gt = torch.tensor(f), torch.tensor(g)                    # float64
    logits = ft @ gt.T / tau
    labels = torch.arange(6)
    ce = torch.nn.functional.cross_entropy
    clip_loss = 0.5 * (ce(logits, labels, reduction="none") + ce(logits.T, labels, reduction="none"))
    want = (-tau * clip_loss).numpy()
    got = negclip_scores(f, g, tau=tau, batch_size=32768, k=3, rng=np.random.default_rng(0), dtype="float64")
    assert np.abs(got - want).max() < 1e-12                      # B capped at N: one batch, K passes agree


def test_negclip_k_batchings_average_the_per_batch_normalisers():
    rng = np.random.default_rng(2)
    f, g = unit(rng, 6, 4), unit(rng, 6, 4)
    tau, b, k = 0.1, 2, 3
    got = negclip_scores(f, g, tau=tau, batch_size=b, k=k, rng=np.random.default_rng(7), dtype="float64")
    # second computation: the same partitions, each batch by the definition with plain numpy
    r = np.zeros(6)
    draw = np.random.default_rng(7)
    for _ in range(k):
        for idx in equal_batches(6, b, draw):
            s = f[idx] @ g[idx].T / tau
            lse = lambda a, ax: np.log(np.exp(a).sum(axis=ax))  # noqa: E731 (small logits: no overflow)
            r[idx] += 0.5 * tau * (lse(s, 1) + lse(s, 0))
    want = (f * g).sum(1) - r / k
    assert np.abs(got - want).max() < 1e-12


def test_equal_batches_partition_sizes():
    parts = equal_batches(10, 4, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [3, 3, 4]            # ceil(10/4) = 3 batches, none tiny
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def test_negclip_logsumexp_does_not_overflow_float32_and_tiles_agree():
    # f = g: logits 1/τ = 100 on the diagonal; exp(100) overflows float32 (the reference's torch.exp does)
    rng = np.random.default_rng(3)
    f = unit(rng, 5, 8)
    g = f.copy()
    g[4] = -f[4]                                                  # one pair far below the others (fallback path)
    want = negclip_scores(f, g, tau=0.01, batch_size=5, k=1, rng=np.random.default_rng(0), dtype="float64")
    got32 = negclip_scores(f.astype(np.float32), g.astype(np.float32), tau=0.01, batch_size=5, k=1,
                           rng=np.random.default_rng(0))
    assert np.isfinite(got32).all()
    assert np.abs(got32 - want).max() < 1e-4
    ft, gt = torch.tensor(f), torch.tensor(g)
    for tile in (1, 2, 5):
        row, col = batch_lse_terms(ft, gt, 0.01, tile=tile)
        s = ft @ gt.T / 0.01
        assert torch.allclose(row, torch.logsumexp(s, 1), atol=1e-12)
        assert torch.allclose(col, torch.logsumexp(s, 0), atol=1e-12)
    assert torch.allclose(negclip_batch(ft, gt, 0.01, tile=2), negclip_batch(ft, gt, 0.01), atol=1e-12)


# ---- normsim -------------------------------------------------------------------------------------------
def test_normsim_by_hand():
    t = np.stack([E1, E2])
    f = np.array([[0.6, 0.8, 0.0], [-0.6, 0.0, 0.8], [0.0, 0.0, 1.0]], np.float32)
    # similarities: (0.6, 0.8), (−0.6, 0), (0, 0)
    assert normsim_inf(f, t) == pytest.approx([0.8, 0.6, 0.0], abs=1e-6)       # abs() matters for row 2
    gram = t.T @ t
    assert normsim_2(f, gram) == pytest.approx([1.0, 0.6, 0.0], abs=1e-6)
    assert normsim_2_direct(f, t) == pytest.approx([1.0, 0.6, 0.0], abs=1e-6)


def test_normsim_tiled_and_gram_paths_match_the_direct_norm():
    rng = np.random.default_rng(4)
    f, t = unit(rng, 6, 4).astype(np.float32), unit(rng, 5, 4).astype(np.float32)
    assert np.allclose(normsim_inf(f, t, tile=2), normsim_direct(f, t, np.inf), atol=1e-6)
    assert np.allclose(normsim_2(f, t.T @ t), normsim_direct(f, t, 2), atol=1e-6)
    assert np.allclose(normsim_2_direct(f, t), normsim_direct(f, t, 2), atol=1e-6)


def test_normsim2_squared_is_m_times_vas():
    rng = np.random.default_rng(5)
    f, t = unit(rng, 6, 4), unit(rng, 5, 4)
    m = len(t)
    sigma = second_moment(t)                                       # TᵀT / M
    assert np.allclose(normsim_direct(f, t, 2) ** 2, m * vas(f, sigma), atol=1e-6)
    assert np.allclose(vas_low_rank(f, t), vas(f, sigma), atol=1e-6)
    assert (np.argsort(normsim_direct(f, t, 2)) == np.argsort(vas(f, sigma))).all()


# ---- vas / vas-d ------------------------------------------------------------------------------------------
def test_vas_by_hand():
    sigma = second_moment(np.stack([E1, E2]))                      # diag(1/2, 1/2, 0)
    f = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [0.6, 0.0, 0.8]], np.float32)
    assert vas(f, sigma) == pytest.approx([0.5, 0.0, 0.18], abs=1e-6)


def test_vas_d_one_iteration_by_hand():
    f = np.stack([E1, E1, E2, E3])
    # Σ = (2 e1e1ᵀ + e2e2ᵀ + e3e3ᵀ)/4 -> v = (.5, .5, .25, .25); ascending stable order 2, 3, 0, 1
    got = vas_d(f, target_size=2, iters=1, target_fraction=1.0, rng=np.random.default_rng(0))
    assert got == pytest.approx([1.5, 1.75, 0.0, 0.25])


def test_vas_d_two_iterations_by_hand():
    f = np.stack([E1, E1, E2, E3])
    # chunk = ceil((4 − 2)/2) = 1. it 0: drop row 2 (q 0) -> 0.0. Σ from rows 0, 1, 3 = (2e1e1ᵀ + e3e3ᵀ)/3,
    # v = (2/3, 2/3, 1/3): drop row 3 (q 0) -> 1.0; survivors q = 1/3, 2/3 -> 2 + q
    got = vas_d(f, target_size=2, iters=2, target_fraction=1.0, rng=np.random.default_rng(0))
    assert got == pytest.approx([2 + 1 / 3, 2 + 2 / 3, 0.0, 1.0])
    top2 = np.argsort(-got)[:2]
    assert sorted(top2) == [0, 1]


# ---- DataComp baselines ----------------------------------------------------------------------------------
def test_basic_filter_edges():
    caps = ["a brown dog running", "a brown dog running", "brown dog", "a brown dog running", "a b c", "a brown dog"]
    w = [200, 199, 800, 0, 800, np.nan]
    h = [600, 199, 800, 300, 800, 500]
    english = [True, True, True, True, True, True]                # language detector stubbed
    c = basic_columns(caps, w, h, english)
    assert c["basic_aspect"][0] == 3.0 and c["basic"][0] == 1.0   # aspect exactly 3.0 is kept
    assert c["basic"][1] == 0.0 and c["basic_min_side"][1] == 199  # 199-px side excluded
    assert c["basic_words"][2] == 2 and c["basic"][2] == 0.0       # 2-word caption excluded
    assert c["basic_min_side"][3] == 0 and np.isnan(c["basic_aspect"][3]) and c["basic"][3] == 0.0
    assert c["basic_chars"][4] == 5 and c["basic"][4] == 0.0       # 5 characters: not > 5
    assert np.isnan(c["basic_min_side"][5]) and c["basic"][5] == 0.0  # unknown size fails
    c2 = basic_columns(caps[:1], [200], [600], [False])
    assert c2["basic"][0] == 0.0 and c2["basic_english"][0] == 0.0


def test_laion_filter_by_hand():
    c = laion_columns(np.array([0.28, 0.2799, np.nan, 0.5]), np.array([True, True, True, False]))
    assert c["laion"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_image_based_inner_product_argmax_is_not_nearest_centroid():
    c = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)             # unnormalised centroids
    x = np.array([[0.8, 0.6]], np.float32)
    assert assign(x, c, how="ip").tolist() == [1]                 # x·c = (0.8, 1.2)
    assert assign(x, c, how="l2").tolist() == [0]                 # ||x−c||² = (0.4, 2.6)
    t = np.array([[0.0, 1.0]], np.float32)
    assert target_clusters(t, c).tolist() == [1]


def test_image_based_caption_prefilter_and_kmeans():
    ok = caption_prefilter(["a dog", "dog", "a cat", "un chien noir"], [True, True, True, False])
    assert ok.tolist() == [False] * 4                              # 5 chars, 1 token, 5 chars, not English
    ok = caption_prefilter(["a dog!", "dog", "two cats"], [True, True, True])
    assert ok.tolist() == [True, False, True]                      # > 1 token and > 5 characters
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal([5, 0], 0.1, (20, 2)), rng.normal([0, 5], 0.1, (20, 2))]).astype(np.float32)
    cen = kmeans(pts, 2, niter=20, seed=0)
    assert sorted(np.round(cen[:, 0]).tolist()) == [0.0, 5.0]
    lab = assign(pts, cen, how="l2")
    assert len(set(lab[:20])) == 1 and len(set(lab[20:])) == 1 and lab[0] != lab[20]
