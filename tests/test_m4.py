"""The M4 solver (audit.analyses.balance.m4): hand-solvable problems, an independent SLSQP solve, metrics, streaming, MetaCLIP oracles."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from audit.analyses.balance.m4 import Moments, association_bias, association_matrix, bernoulli_keep, box_qp, constraint_values, group_shares, metaclip_keep_prob, metaclip_threshold_for_budget, representation_bias, solve_m4, solve_m4_streaming


# ---- hand-solvable problems ---------------------------------------------------------------------------------
def test_first_order_only_by_hand():
    # 3 rows of group A, 1 of group B, η = 1/2 (Σq = 2), exact parity: q_B = 1 and the A rows share 1 equally.
    S = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], float)
    r = solve_m4(S, budget=0.5, eps_rep=0.0, eps_assoc=None)
    assert r.status == "met"
    np.testing.assert_allclose(r.q, [1 / 3, 1 / 3, 1 / 3, 1.0], atol=1e-7)
    # ½ Σ (q − ½)² = ½ (3 · (1/6)² + (1/2)²) = 1/6
    assert r.objective == pytest.approx(1 / 6, abs=1e-8)
    assert r.rb_before == pytest.approx(0.25) and r.rb == pytest.approx(0.0, abs=1e-7)


def test_second_order_by_hand():
    # A rows y = (1, 1, 0), B rows y = (1, 0, 0); η = 2/3 (Σq = 4); ε = 0.
    # Parity: q_A1+q_A2+q_A3 = q_B1+q_B2+q_B3 = 2; association: q_A1 + q_A2 = q_B1. By symmetry and
    # stationarity the optimum is q = (½, ½, 1 | 1, ½, ½), objective ½ · (4 · (1/6)² + 2 · (1/3)²) = 1/6.
    S = np.array([[1, 0]] * 3 + [[0, 1]] * 3, float)
    Y = np.array([[1], [1], [0], [1], [0], [0]], float)
    r = solve_m4(S, Y, budget=2 / 3, eps_rep=0.0, eps_assoc=0.0)
    assert r.status == "met"
    np.testing.assert_allclose(r.q, [0.5, 0.5, 1, 1, 0.5, 0.5], atol=1e-6)
    assert r.objective == pytest.approx(1 / 6, abs=1e-7)
    # before: ȳ = ½; Σ a_A (y − ½) = ½(½ + ½ − ½) − ½(½ − ½ − ½) = ½ over Σq = 6 -> AB = 1/12
    assert r.ab_before == pytest.approx(1 / 12)
    assert r.ab == pytest.approx(0.0, abs=1e-7)


def test_infeasible_reports_best_achievable():
    # 3 A rows and 1 B row at η = 0.9 (Σq = 3.6): q_B ≤ 1 so B's share is at most 1/3.6; RB ≥ ½ − 1/3.6 = 2/9.
    S = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], float)
    r = solve_m4(S, budget=0.9, eps_rep=0.0, eps_assoc=None)
    assert r.status == "infeasible"
    assert "cannot all be met" in r.message and "0.2222" in r.message
    assert r.rb == pytest.approx(2 / 9, abs=1e-6)
    np.testing.assert_allclose(r.q, [2.6 / 3] * 3 + [1.0], atol=1e-6)
    assert r.q.sum() == pytest.approx(3.6, abs=1e-9)


def test_unknown_rows_are_neither_forced_in_nor_out():
    # 2 A, 1 B and 3 unknown rows at η = ½ (Σq = 3): parity needs q_A1 + q_A2 = q_B; the unknown rows take the rest.
    S = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 0], [0, 0]], float)
    r = solve_m4(S, budget=0.5, eps_rep=0.0, eps_assoc=None)
    assert r.status == "met"
    # q = (x, x, 2x, u, u, u) with 4x + 3u = 3; minimising 2(x−½)² + (2x−½)² + 3(u−½)² over x gives
    # (68/3) x = 8: x = 6/17, q_B = 12/17, u = 9/17.
    np.testing.assert_allclose(r.q, np.array([6, 6, 12, 9, 9, 9]) / 17, atol=1e-7)


def test_soft_memberships_count_by_confidence():
    S = np.array([[0.5, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # shares: A = 1.5 / 2.5, B = 1 / 2.5
    np.testing.assert_allclose(group_shares(np.ones(3), S), [0.6, 0.4])
    assert representation_bias(np.ones(3), S, np.array([0.5, 0.5])) == pytest.approx(0.1)


# ---- random problems against an independent SLSQP solve -----------------------------------------------------
def _random_problem(rng, n, m, c):
    lab = rng.integers(0, m + 1, n)
    conf = rng.uniform(0.5, 1.0, n)
    S = np.zeros((n, m))
    for k in range(m):
        S[lab == k, k] = conf[lab == k]
    Y = rng.random((n, c)) * (rng.random((n, c)) < 0.5)
    Y[:, 0] = np.clip(Y[:, 0] + 0.4 * S[:, 0], 0, 1)
    return S, Y


def _slsqp(S, Y, target, eta, eps_r, eps_a, centre, t):
    n = len(t)
    mass = S.sum(1)
    A = S - mass[:, None] * target
    n0 = eta * n
    cons = [{"type": "eq", "fun": lambda q: q.sum() - n0, "jac": lambda q: np.ones(n)}]
    for k in range(S.shape[1]):
        gk = A[:, k]
        cons += [{"type": "ineq", "fun": lambda q, g=gk: eps_r * (q @ mass) - q @ g, "jac": lambda q, g=gk: eps_r * mass - g},
                 {"type": "ineq", "fun": lambda q, g=gk: eps_r * (q @ mass) + q @ g, "jac": lambda q, g=gk: eps_r * mass + g}]
        for r in range(Y.shape[1]):
            g = A[:, k] * (Y[:, r] - centre[r])
            cons += [{"type": "ineq", "fun": lambda q, g=g: eps_a * n0 - q @ g, "jac": lambda q, g=g: -g},
                     {"type": "ineq", "fun": lambda q, g=g: eps_a * n0 + q @ g, "jac": lambda q, g=g: g}]
    res = minimize(lambda q: 0.5 * ((q - t) ** 2).sum(), np.full(n, eta), jac=lambda q: q - t,
                   bounds=[(0, 1)] * n, constraints=cons, method="SLSQP", options={"maxiter": 1000, "ftol": 1e-13})
    return res


@pytest.mark.parametrize("seed", range(6))
def test_random_problem_matches_slsqp(seed):
    rng = np.random.default_rng(seed)
    n, m, c = int(rng.integers(40, 200)), int(rng.integers(2, 4)), int(rng.integers(1, 4))
    S, Y = _random_problem(rng, n, m, c)
    u = rng.uniform(0.5, 1.5, n) if seed % 2 else None
    eta, eps_r, eps_a = 0.8, 0.05, 0.02
    target = np.full(m, 1 / m)
    centre = Y.mean(0)
    r = solve_m4(S, Y, budget=eta, eps_rep=eps_r, eps_assoc=eps_a, utility=u, centre=centre)
    t = np.full(n, eta) if u is None else eta * u / u.mean()
    ref = _slsqp(S, Y, target, eta, eps_r, eps_a, centre, t)
    assert ref.success, ref.message
    assert r.status == "met"
    # feasibility of our q, checked directly
    assert r.q.min() >= 0 and r.q.max() <= 1
    assert r.q.sum() == pytest.approx(eta * n, abs=1e-7)
    rep, assoc = constraint_values(r.q, S, Y, target, centre, eta)
    assert rep <= eps_r + 1e-7 and assoc <= eps_a + 1e-7
    # same optimum as the independent solve
    assert r.objective == pytest.approx(ref.fun, rel=1e-5, abs=1e-8)
    np.testing.assert_allclose(r.q, ref.x, atol=2e-4)


@pytest.mark.parametrize("seed", range(3))
def test_fixed_point_centre_bounds_the_centred_ab(seed):
    rng = np.random.default_rng(100 + seed)
    S, Y = _random_problem(rng, 3000, 2, 5)
    r = solve_m4(S, Y, budget=0.85, eps_rep=0.01, eps_assoc=0.02)
    assert r.ab_before > 0.025  # the constraint binds
    assert r.status == "met"
    assert r.q.sum() == pytest.approx(0.85 * 3000, abs=1e-6)
    assert r.rb <= 0.01 + 1e-6
    assert r.ab <= 0.02 + 1e-6
    assert association_bias(r.q, S, Y, r.target) == pytest.approx(r.ab)
    np.testing.assert_allclose(r.centre, (r.q @ Y) / r.q.sum(), atol=1e-6)


def test_newton_and_lbfgs_agree_and_warm_start_agrees():
    rng = np.random.default_rng(7)
    S, Y = _random_problem(rng, 5000, 2, 4)
    a = solve_m4(S, Y, budget=0.9, eps_rep=0.01, eps_assoc=0.02, method="newton")
    b = solve_m4(S, Y, budget=0.9, eps_rep=0.01, eps_assoc=0.02, method="lbfgs")
    c = solve_m4(S, Y, budget=0.9, eps_rep=0.01, eps_assoc=0.02, warm_rows=1000, rng=np.random.default_rng(1))
    assert a.status == b.status == c.status == "met"
    np.testing.assert_allclose(a.q, b.q, atol=1e-4)
    np.testing.assert_allclose(a.q, c.q, atol=1e-4)
    assert a.objective == pytest.approx(b.objective, rel=1e-5)


def test_streaming_matches_in_memory():
    rng = np.random.default_rng(11)
    n = 6000
    S, Y = _random_problem(rng, n, 2, 3)
    u = rng.uniform(0.5, 1.5, n)
    full = solve_m4(S, Y, budget=0.9, eps_rep=0.01, eps_assoc=0.02, utility=u)

    def chunks():
        for i in range(0, n, 777):
            yield S[i:i + 777], Y[i:i + 777], u[i:i + 777]

    res = solve_m4_streaming(chunks, budget=0.9, eps_rep=0.01, eps_assoc=0.02, sample_rows=1500,
                             rng=np.random.default_rng(0))
    q = np.concatenate([res.policy.weights(a, b, c) for a, b, c in chunks()])
    assert res.status == full.status == "met"
    assert res.sum_q == pytest.approx(0.9 * n, rel=1e-8)
    np.testing.assert_allclose(q, full.q, atol=1e-5)
    assert res.rb == pytest.approx(full.rb, abs=1e-6) and res.ab == pytest.approx(full.ab, abs=1e-6)
    assert res.passes <= 40


# ---- metrics ------------------------------------------------------------------------------------------------
def test_association_matrix_by_hand_and_moments_agree():
    S = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]], float)
    Y = np.array([[1], [0], [0], [0], [1]], float)
    q = np.array([1, 1, 1, 1, 0.5])
    # ȳ^q = 1.5 / 4.5 = 1/3; a_A = (½, ½, −½, −½, 0); Σ q a_A (y − ⅓) = ½(⅔) + ½(−⅓) − ½(−⅓) − ½(−⅓) = ½
    M = association_matrix(q, S, Y, np.array([0.5, 0.5]))
    np.testing.assert_allclose(M[:, 0], [0.5 / 4.5, -0.5 / 4.5])
    mo = Moments(2, 1)
    for i in range(0, 5, 2):  # chunked sums give the same numbers
        mo.add(q[i:i + 2], S[i:i + 2], Y[i:i + 2])
    np.testing.assert_allclose(mo.assoc(np.array([0.5, 0.5])), M)
    assert mo.rb(np.array([0.5, 0.5])) == pytest.approx(representation_bias(q, S, np.array([0.5, 0.5])))


def test_bernoulli_keep_is_seeded_and_chunk_consistent():
    q = np.linspace(0, 1, 1000)
    a = bernoulli_keep(q, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    b = np.concatenate([bernoulli_keep(q[:300], rng), bernoulli_keep(q[300:], rng)])
    assert (a == b).all()
    assert not a[0] and a[-1]


def test_bad_inputs_are_clear():
    S = np.array([[1, 0], [0, 1]], float)
    with pytest.raises(ValueError, match="budget"):
        solve_m4(S, budget=1.5)
    with pytest.raises(ValueError, match="target"):
        solve_m4(S, target=np.array([0.7, 0.7]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        solve_m4(np.array([[2.0, 0], [0, 1]]))
    with pytest.raises(ValueError, match="overlap"):
        solve_m4(np.array([[0.8, 0.8], [0, 1]]))
    with pytest.raises(ValueError, match="utility"):
        solve_m4(S, utility=np.array([-1.0, -1.0]))


def test_box_qp_matches_lbfgsb():
    rng = np.random.default_rng(3)
    for _ in range(10):
        p = int(rng.integers(2, 40))
        M = rng.normal(size=(p, p))
        Q = M @ M.T + 0.01 * np.eye(p)
        g = rng.normal(size=p) * 5
        lo = -rng.random(p) * rng.choice([1, np.inf], p)
        hi = rng.random(p)
        d = box_qp(Q, g, lo, hi)
        ref = minimize(lambda d: (0.5 * d @ Q @ d - g @ d, Q @ d - g), np.zeros(p), jac=True, method="L-BFGS-B",
                       bounds=list(zip(np.where(np.isinf(lo), None, lo), hi)),
                       options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 10000})
        f = lambda v: 0.5 * v @ Q @ v - g @ v  # noqa: E731
        assert np.all(d >= lo - 1e-12) and np.all(d <= hi + 1e-12)
        assert f(d) <= f(ref.x) + 1e-9 * max(1.0, abs(f(ref.x)))


# ---- MetaCLIP keep probabilities (methods.md §9 oracles) ------------------------------------------------------
def test_metaclip_probability_oracles():
    counts = np.array([10, 100, 40])            # entries a, b, c
    t = 20.0
    # text 0: {a} (count ≤ t -> 1); text 1: {b} (t/c = 0.2); text 2: {b, c} -> 1 − 0.8·0.5 = 0.6; text 3: none
    text_ids = np.array([0, 1, 2, 2])
    entry_ids = np.array([0, 1, 1, 2])
    p = metaclip_keep_prob(entry_ids, text_ids, counts, 4, t)
    np.testing.assert_allclose(p, [1.0, 0.2, 0.6, 0.0])


def test_metaclip_same_as_the_metaclip_score_module():
    mc = pytest.importorskip("audit.scores.metaclip")
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 500, 50)
    text_ids = rng.integers(0, 300, 900)
    entry_ids = rng.integers(0, 50, 900)
    ours = metaclip_keep_prob(entry_ids, text_ids, counts, 300, 60.0)
    theirs = mc.keep_probability(text_ids, entry_ids, mc.entry_probability(counts, 60.0), 300)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_metaclip_threshold_matches_budget():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 2000, 200)
    text_ids = np.repeat(np.arange(1000), 2)
    entry_ids = rng.integers(0, 200, 2000)
    t, p = metaclip_threshold_for_budget(entry_ids, text_ids, counts, 1000, 0.4)
    assert p.sum() == pytest.approx(400, rel=1e-6)
    np.testing.assert_allclose(p, metaclip_keep_prob(entry_ids, text_ids, counts, 1000, t))
