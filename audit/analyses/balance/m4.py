"""M4-style data balancing solved exactly through its small dual, and the RB / AB metrics (methods.md §5.1).

No public M4 code exists; this is the moment-matching program the paper describes, as methods.md §5.1
fixes it for this project. Pure numpy/scipy: no I/O, every sampler takes a ``np.random.Generator``.

Inputs (n rows, m groups of the sensitive attribute, c proxies)::

    S  (n, m) in [0, 1]   memberships (soft = imputed confidences; an `unknown` row is all zeros)
    Y  (n, c) in [0, 1]   proxies / labels (concept indicators, zero-shot probabilities, other attributes)
    π  (m,)               target shares among rows that belong to the attribute (default uniform)
    η                     budget: Σ q = η n
    u  (n,)               utility (default 1); the reference sampling is t_i = η u_i / ū

Program (a_ik = s_ik − π_k m_i with m_i = Σ_k s_ik, the row's membership mass)::

    minimise    ½ Σ_i (q_i − t_i)²          over 0 ≤ q_i ≤ 1,  Σ_i q_i = η n
    first       | Σ_i q_i a_ik |          ≤ ε_R · Σ_i q_i m_i      for every group k
    second      | Σ_i q_i a_ik (y_ir − c_r) | ≤ ε_A · η n           for every k, r

Both constraint families are linear in q. The first-order bound is written relative to the kept
membership mass Σ q m (methods.md writes ε_R·ηn); both are linear, and ours makes the reported RB obey
RB ≤ ε_R exactly even when most rows are `unknown`. The second-order bound uses a centre c_r; at the fixed
point c_r = ȳ_r^q (the q-weighted proxy mean) it *is* the centred association of §5.1, so AB ≤ ε_A
exactly. ``solve_m4`` finds that fixed point by re-solving with c ← ȳ^q (warm started; 2–4 rounds).

Dual: with multipliers ν (budget) and λ ≥ 0 (one per signed constraint row) the minimiser over the box is
``q_i = clip(t_i − (ν + λᵀ g_i)/η, 0, 1)`` where g_i is row i's constraint coefficients, so the dual has
1 + 2m + 2mc variables, maximised by projected Newton (L-BFGS-B fallback); a pass is O(n·m·c). Multipliers are
capped at ``penalty``: that is the dual of the elastic problem (an L1 penalty on constraint excess), so an
infeasible tolerance still yields the weights with the least excess, and the result says it is
infeasible and reports the best achievable RB / AB instead of silently ignoring the tolerance.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

BLOCK = 1 << 14          # rows per evaluation block (a block of Y stays in cache for both products)
FEAS_TOL = 1e-6          # absolute slack (metric units) when deciding whether a tolerance is met


# ---------------------------------------------------------------------------------------------------
# metrics (methods.md §5.1)
# ---------------------------------------------------------------------------------------------------
def uniform_target(m: int) -> np.ndarray:
    return np.full(m, 1.0 / m)


def group_shares(q: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Share of each group in the kept membership mass: Σq s_k / Σq m. q (n,), S (n, m) -> (m,)."""
    q = np.asarray(q, np.float64)
    num = q @ np.asarray(S, np.float64)
    den = num.sum()
    return num / den if den > 0 else np.full(S.shape[1], np.nan)


def representation_bias(q: np.ndarray, S: np.ndarray, target: np.ndarray) -> float:
    """RB = max_k |Σq s_k / Σq m − π_k|."""
    return float(np.max(np.abs(group_shares(q, S) - np.asarray(target, np.float64))))


def association_matrix(q: np.ndarray, S: np.ndarray, Y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Σ_i q_i (s_ik − π_k m_i)(y_ir − ȳ_r^q) / Σq for every (k, r); ȳ^q is the q-weighted mean. -> (m, c)."""
    q = np.asarray(q, np.float64)
    S = np.asarray(S, np.float64)
    Y = np.asarray(Y, np.float64)
    total = q.sum()
    if total <= 0 or Y.shape[1] == 0:
        return np.zeros((S.shape[1], Y.shape[1]))
    A = S - S.sum(1, keepdims=True) * np.asarray(target, np.float64)[None, :]
    Aq = A * q[:, None]
    ybar = (q @ Y) / total
    return (Aq.T @ Y - np.outer(Aq.sum(0), ybar)) / total


def association_bias(q: np.ndarray, S: np.ndarray, Y: np.ndarray, target: np.ndarray) -> float:
    """AB = max_{k,r} |Σ q (s_k − π_k m)(y_r − ȳ_r^q)| / Σq (0 when there are no proxies)."""
    M = association_matrix(q, S, Y, target)
    return float(np.max(np.abs(M))) if M.size else 0.0


@dataclass
class Moments:
    """Sums that every §5.1 metric is a function of; add chunk by chunk for pools that do not fit in memory."""

    m: int
    c: int
    n: int = 0
    sum_q: float = 0.0
    sum_q2: float = 0.0
    qs: np.ndarray = None        # Σ q s_k          (m,)
    qy: np.ndarray = None        # Σ q y_r          (c,)
    qsy: np.ndarray = None       # Σ q s_k y_r      (m, c)
    qmy: np.ndarray = None       # Σ q m y_r        (c,)

    def __post_init__(self):
        self.qs = np.zeros(self.m) if self.qs is None else self.qs
        self.qy = np.zeros(self.c) if self.qy is None else self.qy
        self.qsy = np.zeros((self.m, self.c)) if self.qsy is None else self.qsy
        self.qmy = np.zeros(self.c) if self.qmy is None else self.qmy

    def add(self, q: np.ndarray, S: np.ndarray, Y: np.ndarray) -> "Moments":
        q = np.asarray(q, np.float64)
        S = np.asarray(S, np.float64)
        Y = np.asarray(Y, np.float64)
        self.n += len(q)
        self.sum_q += float(q.sum())
        self.sum_q2 += float(q @ q)
        self.qs += q @ S
        self.qy += q @ Y
        Sq = S * q[:, None]
        self.qsy += Sq.T @ Y
        self.qmy += Sq.sum(1) @ Y
        return self

    def shares(self) -> np.ndarray:
        den = self.qs.sum()
        return self.qs / den if den > 0 else np.full(self.m, np.nan)

    def rb(self, target: np.ndarray) -> float:
        return float(np.max(np.abs(self.shares() - target)))

    def assoc(self, target: np.ndarray) -> np.ndarray:
        if self.sum_q <= 0 or self.c == 0:
            return np.zeros((self.m, self.c))
        qa_y = self.qsy - np.outer(target, self.qmy)            # Σ q a_k y_r
        qa = self.qs - target * self.qs.sum()                   # Σ q a_k
        return (qa_y - np.outer(qa, self.qy / self.sum_q)) / self.sum_q

    def ab(self, target: np.ndarray) -> float:
        M = self.assoc(target)
        return float(np.max(np.abs(M))) if M.size else 0.0


def summarize(q: np.ndarray, S: np.ndarray, Y: np.ndarray, target: np.ndarray) -> dict:
    """RB, AB, shares and the association matrix of one weighting (q ≡ 1 is the pool before balancing)."""
    mo = Moments(S.shape[1], Y.shape[1]).add(q, S, Y)
    return {"rb": mo.rb(target), "ab": mo.ab(target), "shares": mo.shares(), "assoc": mo.assoc(target),
            "sum_q": mo.sum_q, "mass": float(mo.qs.sum())}


def bernoulli_keep(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """keep_i ~ Bernoulli(q_i), one uniform per row in row order (chunked calls concatenate exactly)."""
    return rng.random(len(q)) < np.asarray(q, np.float64)


# ---------------------------------------------------------------------------------------------------
# the dual
# ---------------------------------------------------------------------------------------------------
@dataclass
class Chunk:
    """Per-row constants of the program for a block of rows, members of the attribute first.

    Rows with no membership (m_i = 0, e.g. `unknown`) have a_i = 0: their weight depends on ν alone, so
    the O(m·c) products run over members only. ``order`` restores the caller's row order."""

    A: np.ndarray       # (b_mem, m) a_ik = s_ik − π_k m_i, members only
    mass: np.ndarray    # (b_mem,)   m_i
    Y: np.ndarray       # (b, c)     proxies of every row, members first
    t: np.ndarray       # (b,)       reference sampling η u_i / ū, members first
    order: np.ndarray | None   # permutation: position j holds caller row order[j] (None: identity)

    @classmethod
    def build(cls, S: np.ndarray, Y: np.ndarray, t: np.ndarray, target: np.ndarray) -> "Chunk":
        S = np.asarray(S, np.float64)
        Y = np.asarray(Y, np.float64)
        t = np.asarray(t, np.float64)
        mass = S.sum(1)
        member = mass > 0
        if member.all():
            order = None
        else:
            order = np.concatenate([np.flatnonzero(member), np.flatnonzero(~member)])
            S, Y, t, mass = S[order], Y[order], t[order], mass[order]
        k = int(member.sum())
        return cls(S[:k] - mass[:k, None] * target[None, :], mass[:k], Y, t, order)

    @property
    def k(self) -> int:
        return len(self.mass)

    def restore(self, q_perm: np.ndarray) -> np.ndarray:
        if self.order is None:
            return q_perm
        q = np.empty_like(q_perm)
        q[self.order] = q_perm
        return q


@dataclass
class Eval:
    """Sums over rows at one dual point: everything the dual value, gradient and Newton model need."""

    dev: float            # Σ (q − t)²
    fsum: np.ndarray      # Σ q f_i   (P,) with f_i = [1, a_i (m), m_i, a_ik (y_ir − c_r) (m·c)]
    free: float           # #{0 < q < 1}
    gram: np.ndarray | None = None   # Σ_{free} f_i f_iᵀ  (P, P)
    qy: np.ndarray | None = None     # Σ q y_r over every row (c,)

    def __iadd__(self, o: "Eval") -> "Eval":
        self.dev += o.dev
        self.fsum = self.fsum + o.fsum
        self.free += o.free
        if self.gram is not None:
            self.gram = self.gram + o.gram
        if self.qy is not None:
            self.qy = self.qy + o.qy
        return self


@dataclass
class Dual:
    """The dual of the program for a fixed centre c. x = [ν, α⁺ (m), α⁻ (m), β⁺ (m·c), β⁻ (m·c)].

    The price of row i is f_i · (T x) with f_i = [1, a_i, m_i, a_ik (y_ir − c_r)] and
    T x = [ν, α⁺ − α⁻, −ε_R Σ(α⁺ + α⁻), β⁺ − β⁻]; q_i = clip(t_i − price_i / η, 0, 1)."""

    m: int
    c: int
    n: int
    eta: float
    eps_rep: float | None
    eps_assoc: float | None
    centre: np.ndarray

    @property
    def size(self) -> int:
        return 1 + 2 * self.m + 2 * self.m * self.c

    @property
    def n_features(self) -> int:
        return 2 + self.m + self.m * self.c

    @property
    def n0(self) -> float:
        return self.eta * self.n

    def transform(self) -> np.ndarray:
        """T (P, size): feature weights w = T x."""
        m, c = self.m, self.c
        eps = self.eps_rep or 0.0
        T = np.zeros((self.n_features, self.size))
        T[0, 0] = 1.0
        for k in range(m):
            T[1 + k, 1 + k] = 1.0
            T[1 + k, 1 + m + k] = -1.0
        T[1 + m, 1:1 + 2 * m] = -eps
        mc = m * c
        T[2 + m:, 1 + 2 * m:1 + 2 * m + mc] = np.eye(mc)
        T[2 + m:, 1 + 2 * m + mc:] = -np.eye(mc)
        return T

    def offsets(self) -> np.ndarray:
        """h_x: gradient = Tᵀ Σ q f / (ηn) − h_x."""
        m, c = self.m, self.c
        return np.concatenate([[1.0], np.zeros(2 * m), np.full(2 * m * c, self.eps_assoc or 0.0)])

    def bounds(self, penalty: float) -> tuple[np.ndarray, np.ndarray]:
        m, c = self.m, self.c
        r = penalty if self.eps_rep is not None else 0.0
        a = penalty if self.eps_assoc is not None else 0.0
        lo = np.concatenate([[-np.inf], np.zeros(2 * m + 2 * m * c)])
        hi = np.concatenate([[np.inf], np.full(2 * m, r), np.full(2 * m * c, a)])
        return lo, hi

    def weights_perm(self, x: np.ndarray, ch: Chunk) -> np.ndarray:
        """q in the chunk's member-first order."""
        w = self.transform() @ x
        return self._weights(w, ch)

    def weights(self, x: np.ndarray, ch: Chunk) -> np.ndarray:
        return ch.restore(self.weights_perm(x, ch))

    def _weights(self, w: np.ndarray, ch: Chunk) -> np.ndarray:
        k = ch.k
        q = np.empty(len(ch.t))
        q[k:] = np.clip(ch.t[k:] - w[0] / self.eta, 0.0, 1.0)
        for i in range(0, k, BLOCK):
            j = min(i + BLOCK, k)
            q[i:j] = np.clip(ch.t[i:j] - self._price(w, ch.A[i:j], ch.mass[i:j], ch.Y[i:j]) / self.eta, 0.0, 1.0)
        return q

    def _price(self, w: np.ndarray, A: np.ndarray, mass: np.ndarray, Y: np.ndarray) -> np.ndarray:
        m, c = self.m, self.c
        p = w[0] + A @ w[1:1 + m] + w[1 + m] * mass
        if c:
            B = w[2 + m:].reshape(m, c)
            if np.any(B):
                p += np.einsum("ik,ik->i", Y @ B.T - (B @ self.centre)[None, :], A)
        return p

    def evaluate(self, x: np.ndarray, chunks: Iterable[Chunk], *, hess: bool = False, qy: bool = False) -> Eval:
        m, c = self.m, self.c
        P = self.n_features
        w = self.transform() @ x
        total = Eval(0.0, np.zeros(P), 0.0, np.zeros((P, P)) if hess else None, np.zeros(c) if qy else None)
        for ch in chunks:
            k = ch.k
            t_o = ch.t[k:]
            q_o = np.clip(t_o - w[0] / self.eta, 0.0, 1.0)
            free_o = float(np.count_nonzero((q_o > 0) & (q_o < 1)))
            fs = np.zeros(P)
            fs[0] = q_o.sum()
            e = Eval(float(((q_o - t_o) ** 2).sum()), fs, free_o, None, None)
            if hess:
                e.gram = np.zeros((P, P))
                e.gram[0, 0] = free_o
            if qy:
                e.qy = q_o @ ch.Y[k:] if c else np.zeros(0)
            total += e
            for i in range(0, k, BLOCK):
                j = min(i + BLOCK, k)
                A, mass, Y, t = ch.A[i:j], ch.mass[i:j], ch.Y[i:j], ch.t[i:j]
                q = np.clip(t - self._price(w, A, mass, Y) / self.eta, 0.0, 1.0)
                Aq = A * q[:, None]
                qa = Aq.sum(0)
                fs = np.empty(P)
                fs[0] = q.sum()
                fs[1:1 + m] = qa
                fs[1 + m] = q @ mass
                if c:
                    fs[2 + m:] = (Aq.T @ Y - np.outer(qa, self.centre)).ravel()
                free = (q > 0) & (q < 1)
                e = Eval(float(((q - t) ** 2).sum()), fs, float(np.count_nonzero(free)))
                if hess:
                    F = self._features(A[free], mass[free], Y[free])
                    e.gram = F.T @ F
                if qy:
                    e.qy = q @ Y if c else np.zeros(0)
                total += e
        return total

    def _features(self, A: np.ndarray, mass: np.ndarray, Y: np.ndarray) -> np.ndarray:
        m, c = self.m, self.c
        F = np.empty((len(mass), self.n_features))
        F[:, 0] = 1.0
        F[:, 1:1 + m] = A
        F[:, 1 + m] = mass
        if c:
            F[:, 2 + m:] = (A[:, :, None] * (Y - self.centre)[:, None, :]).reshape(len(mass), m * c)
        return F

    def value_grad(self, x: np.ndarray, e: Eval) -> tuple[float, np.ndarray]:
        """Dual value D(x) (to maximise) and its gradient."""
        g = self.transform().T @ e.fsum / self.n0 - self.offsets()
        return e.dev / (2 * self.n) + float(x @ g), g

    def hessian(self, e: Eval) -> np.ndarray:
        T = self.transform()
        return -(T.T @ e.gram @ T) / (self.eta * self.n0)


def single_thread_blas():
    """BLAS limited to one thread: the products here are thin (n×m by n×c), where OpenBLAS threads only
    contend (measured 40× slower on a loaded 2-core machine)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _projected_gradient(g: np.ndarray, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Largest ascent component that the bounds allow (0 at a maximiser of the box-constrained dual)."""
    pg = g.copy()
    pg[(x <= lo) & (g < 0)] = 0.0
    pg[(x >= hi) & (g > 0)] = 0.0
    return float(np.max(np.abs(pg))) if len(pg) else 0.0


def box_qp(Q: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """argmin_d ½ dᵀQd − gᵀd over lo ≤ d ≤ hi (Q symmetric positive definite; lo ≤ 0 ≤ hi; ±inf allowed).

    Primal active-set method: solve on the free set with the bound variables fixed, step back to the
    box when the solution leaves it (fixing the blocking variable), release a bound variable whose
    multiplier has the wrong sign. Exact up to rounding; p ≤ a few hundred here.
    """
    p = len(g)
    d = np.zeros(p)
    fixed = np.zeros(p, bool)
    for _ in range(max_iter):
        F = ~fixed
        if F.any():
            rhs = g[F] - Q[np.ix_(F, fixed)] @ d[fixed]
            try:
                dF = np.linalg.solve(Q[np.ix_(F, F)], rhs)
            except np.linalg.LinAlgError:
                dF = np.linalg.lstsq(Q[np.ix_(F, F)], rhs, rcond=None)[0]
            cand = d.copy()
            cand[F] = dF
        else:
            cand = d.copy()
        step = cand - d
        out = (cand < lo - 1e-15) | (cand > hi + 1e-15)
        if out.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(step < 0, (lo - d) / step, np.where(step > 0, (hi - d) / step, np.inf))
            ratio = np.where(F, ratio, np.inf)
            j = int(np.argmin(ratio))
            alpha = max(0.0, min(1.0, float(ratio[j])))
            d = np.clip(d + alpha * step, lo, hi)
            d[j] = lo[j] if step[j] < 0 else hi[j]
            fixed[j] = True
            continue
        d = cand
        grad = g - Q @ d                      # ascent direction of the objective −(½dᵀQd − gᵀd)
        release = fixed & (((d <= lo) & (grad > 1e-15)) | ((d >= hi) & (grad < -1e-15)))
        if not release.any():
            return d
        j = int(np.argmax(np.where(release, np.abs(grad), -1.0)))
        fixed[j] = False
    return d


def _newton(dual: Dual, chunks_fn: Callable[[], Iterable[Chunk]], x0: np.ndarray, *, penalty: float,
            max_iter: int, gtol: float) -> tuple[np.ndarray, int, int, bool]:
    """Projected Newton ascent on the (piecewise-quadratic, concave) dual, with Levenberg–Marquardt damping.

    Each iteration forms the Gram matrix of the free rows' features (the generalised Hessian), maximises
    the damped quadratic model g·d + ½ dᵀ(H − μI)d over the box of the multipliers (a dense problem in
    1 + 2m + 2mc variables, solved with L-BFGS-B), and accepts the step when the true dual rises by at
    least a tenth of the model's prediction; μ shrinks after good steps and grows after poor ones.
    Returns (x, iterations, passes over the rows, converged).
    """
    lo, hi = dual.bounds(penalty)
    x = np.clip(np.asarray(x0, np.float64), lo, hi)
    e = dual.evaluate(x, chunks_fn(), hess=True)
    passes = 1
    val, g = dual.value_grad(x, e)
    H = dual.hessian(e)
    scale = max(1e-12, float(np.max(np.abs(np.diag(H)))))
    mu = 1e-6 * scale
    for it in range(1, max_iter + 1):
        if _projected_gradient(g, x, lo, hi) <= gtol:
            return x, it - 1, passes, True
        dlo, dhi = lo - x, hi - x
        pg0 = _projected_gradient(g, x, lo, hi)
        for _attempt in range(30):
            d = box_qp(mu * np.eye(len(x)) - H, g, dlo, dhi)
            pred = float(g @ d + 0.5 * d @ H @ d)
            if pred <= 0:
                mu *= 10
                continue
            xn = x + d
            en = dual.evaluate(xn, chunks_fn(), hess=True)
            passes += 1
            vn, gn = dual.value_grad(xn, en)
            ratio = (vn - val) / pred
            tiny = pred <= 1e-13 * max(1e-3, abs(val))   # below the resolution of the dual value
            if ratio > 0.1 or (tiny and _projected_gradient(gn, xn, lo, hi) < pg0):
                mu = mu / 4 if ratio > 0.75 else mu
                mu = max(mu, 1e-12 * scale)
                break
            mu *= 8
        else:
            return x, it, passes, False
        x, e, val, g = xn, en, vn, gn
        H = dual.hessian(e)
    return x, max_iter, passes, _projected_gradient(g, x, lo, hi) <= gtol


def _lbfgs(dual: Dual, chunks_fn: Callable[[], Iterable[Chunk]], x0: np.ndarray, *, penalty: float,
           max_iter: int, gtol: float) -> tuple[np.ndarray, int, int]:
    from scipy.optimize import minimize

    evals = [0]

    def f(x):
        evals[0] += 1
        v, g = dual.value_grad(x, dual.evaluate(x, chunks_fn()))
        return -v, -g

    lo, hi = dual.bounds(penalty)
    res = minimize(f, x0, jac=True, method="L-BFGS-B",
                   bounds=list(zip(np.where(np.isinf(lo), None, lo), np.where(np.isinf(hi), None, hi))),
                   options={"maxiter": max_iter, "maxfun": 2 * max_iter, "gtol": gtol, "ftol": 1e-16,
                            "maxcor": 30})
    return np.asarray(res.x, np.float64), int(res.nit), evals[0]


def _maximise(dual: Dual, chunks_fn, x0, *, penalty: float, max_iter: int, gtol: float) -> tuple[np.ndarray, int, int]:
    """Newton first; L-BFGS-B from where it stopped if it did not converge."""
    x, it, ev, ok = _newton(dual, chunks_fn, x0, penalty=penalty, max_iter=min(max_iter, 100), gtol=gtol)
    if not ok:
        x, it2, ev2 = _lbfgs(dual, chunks_fn, x, penalty=penalty, max_iter=max_iter, gtol=gtol)
        it, ev = it + it2, ev + ev2
    return x, it, ev


def _fix_budget(dual: Dual, x: np.ndarray, chunks: list[Chunk]) -> np.ndarray:
    """Shift ν so that Σq = ηn exactly (Σq is monotone in ν; bracketed root)."""
    from scipy.optimize import brentq

    w = dual.transform() @ x
    prices = []
    for ch in chunks:
        p = np.full(len(ch.t), w[0])
        for i in range(0, ch.k, BLOCK):
            j = min(i + BLOCK, ch.k)
            p[i:j] = dual._price(w, ch.A[i:j], ch.mass[i:j], ch.Y[i:j])
        prices.append((ch.t, p))
    target = dual.n0

    def excess(shift: float) -> float:
        return sum(float(np.clip(t - (p + shift) / dual.eta, 0, 1).sum()) for t, p in prices) - target

    e0 = excess(0.0)
    if abs(e0) <= 1e-10 * max(1.0, target):
        return x
    step = dual.eta * 1e-3
    lo, hi = (0.0, step) if e0 > 0 else (-step, 0.0)
    while excess(hi) > 0:
        lo, hi = hi, hi + 2 * (hi - lo)
    while excess(lo) < 0:
        lo, hi = lo - 2 * (hi - lo), lo
    shift = brentq(excess, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=200)
    x = x.copy()
    x[0] += shift
    return x


# ---------------------------------------------------------------------------------------------------
# in-memory solver
# ---------------------------------------------------------------------------------------------------
@dataclass
class M4Result:
    q: np.ndarray
    status: str                  # "met" | "infeasible" | "not converged"
    message: str
    rb: float
    ab: float
    rb_before: float
    ab_before: float
    shares: np.ndarray
    shares_before: np.ndarray
    assoc: np.ndarray            # (m, c) after
    assoc_before: np.ndarray     # (m, c) before (q ≡ 1)
    objective: float             # ½ Σ (q − t)²
    target: np.ndarray
    budget: float
    eps_rep: float | None
    eps_assoc: float | None
    dual: np.ndarray
    centre: np.ndarray
    iterations: int
    evaluations: int
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return self.status == "met"


def reference_sampling(n: int, budget: float, utility: np.ndarray | None) -> np.ndarray:
    """t_i = η u_i / ū (η for every row without a utility)."""
    if utility is None:
        return np.full(n, float(budget))
    u = np.asarray(utility, np.float64)
    if u.shape != (n,):
        raise ValueError(f"utility has shape {u.shape}, expected ({n},)")
    if not np.all(np.isfinite(u)):
        raise ValueError("utility has NaN or infinite values; fill them before balancing")
    ubar = u.mean()
    if ubar <= 0:
        raise ValueError(f"the mean utility must be positive (got {ubar:.4g}); shift or rescale the score")
    return budget * u / ubar


def _check_inputs(S, Y, target, budget, eps_rep, eps_assoc):
    S = np.asarray(S, np.float64)
    if S.ndim != 2 or S.shape[1] < 1:
        raise ValueError("memberships S must be a 2-d array with one column per group")
    n, m = S.shape
    Y = np.zeros((n, 0)) if Y is None else np.asarray(Y, np.float64)
    if Y.ndim != 2 or Y.shape[0] != n:
        raise ValueError(f"proxies Y must have shape (n, c) with n = {n}, got {Y.shape}")
    if n == 0:
        raise ValueError("no rows to balance")
    for name, arr in (("memberships", S), ("proxies", Y)):
        if not np.all(np.isfinite(arr)) or (arr.size and (arr.min() < 0 or arr.max() > 1 + 1e-12)):
            raise ValueError(f"{name} must lie in [0, 1]")
    if np.any(S.sum(1) > 1 + 1e-9):
        raise ValueError("a row's memberships sum to more than 1 (groups of one attribute must not overlap)")
    target = uniform_target(m) if target is None else np.asarray(target, np.float64)
    if target.shape != (m,) or np.any(target < 0) or abs(target.sum() - 1) > 1e-6:
        raise ValueError(f"target proportions must be {m} non-negative numbers summing to 1, got {target}")
    if not 0 < budget <= 1:
        raise ValueError(f"budget η must be in (0, 1], got {budget}")
    for name, e in (("eps_rep", eps_rep), ("eps_assoc", eps_assoc)):
        if e is not None and not (e >= 0 and np.isfinite(e)):
            raise ValueError(f"{name} must be a non-negative number or None, got {e}")
    return S, Y, target / target.sum()


def solve_m4(S: np.ndarray, Y: np.ndarray | None = None, *, target: np.ndarray | None = None, budget: float = 0.9,
             eps_rep: float | None = 0.01, eps_assoc: float | None = 0.01, utility: np.ndarray | None = None,
             centre: np.ndarray | str = "fixed-point", penalty: float = 1e4, max_iter: int = 3000,
             gtol: float = 1e-9, warm_rows: int | None = 200_000, method: str = "newton",
             rng: np.random.Generator | None = None, reference: np.ndarray | None = None) -> M4Result:
    """Balance weights q for memberships S (n, m) and proxies Y (n, c); see the module docstring.

    centre: "fixed-point" (default: c = ȳ^q at the solution, so the second-order bound is the centred AB of
    §5.1) or a fixed array (c,) (then the problem is one convex QP; used for cross-checks).
    method: "newton" (projected Newton on the dual, L-BFGS-B fallback) or "lbfgs" (L-BFGS-B only).
    warm_rows: above this many rows, first solve on a uniform subsample of n/4 rows (recursively) and
    start from its dual, which is intensive (per-row units), so it transfers; None disables it.
    rng: draws that subsample; the result does not depend on it beyond solver tolerance.
    reference: the reference sampling t itself (overrides utility; used by the warm start and the
    streaming variant so that a subsample keeps the pool's ū).
    """
    t0 = time.perf_counter()
    S, Y, target = _check_inputs(S, Y, target, budget, eps_rep, eps_assoc)
    n, m = S.shape
    c = Y.shape[1]
    t = reference_sampling(n, budget, utility) if reference is None else np.asarray(reference, np.float64)
    if method not in ("newton", "lbfgs"):
        raise ValueError(f"unknown method {method!r}")
    fixed = not isinstance(centre, str)
    if fixed:
        cen = np.asarray(centre, np.float64)
        if cen.shape != (c,):
            raise ValueError(f"centre must have shape ({c},)")
    else:
        tq = np.clip(t, 0, 1)
        cen = (tq @ Y) / tq.sum() if c else np.zeros(0)
    dual = Dual(m, c, n, float(budget), eps_rep, eps_assoc, cen)
    x = np.zeros(dual.size)
    iters = evals = 0
    levels: list = []
    if warm_rows is not None and n > warm_rows:
        rng = rng if rng is not None else np.random.default_rng(0)
        idx = np.sort(rng.choice(n, size=n // 4, replace=False))
        sub = solve_m4(S[idx], Y[idx], target=target, budget=budget, eps_rep=eps_rep, eps_assoc=eps_assoc,
                       reference=t[idx], centre=cen if fixed else "fixed-point", penalty=penalty,
                       max_iter=max_iter, gtol=gtol, warm_rows=warm_rows, method=method, rng=rng)
        x = sub.dual.copy()
        levels = list(sub.extra.get("levels", []))
        dual.centre = sub.centre.copy() if not fixed else cen
        iters += sub.iterations
        evals += sub.evaluations
    own0 = evals
    chunk = Chunk.build(S, Y, t, target)
    rounds = 1 if fixed or c == 0 or eps_assoc is None else 8
    with single_thread_blas():
        for _ in range(rounds):
            if method == "newton":
                x, it, ev = _maximise(dual, lambda: [chunk], x, penalty=penalty, max_iter=max_iter, gtol=gtol)
            else:
                x, it, ev = _lbfgs(dual, lambda: [chunk], x, penalty=penalty, max_iter=max_iter, gtol=gtol)
            iters += it
            evals += ev
            x = _fix_budget(dual, x, [chunk])
            if rounds == 1:
                break
            e = dual.evaluate(x, [chunk], qy=True)
            evals += 1
            new = e.qy / e.fsum[0]
            if float(np.max(np.abs(new - dual.centre))) <= 1e-7:
                break
            dual.centre = new
        else:
            if rounds > 1:  # the last centre update changed the weights: restore the exact budget
                x = _fix_budget(dual, x, [chunk])
        q = dual.weights(x, chunk)
        res = _result(q, S, Y, t, target, budget, eps_rep, eps_assoc, x, dual, penalty, iters, evals,
                      time.perf_counter() - t0)
    res.extra["levels"] = levels + [(n, evals - own0)]
    return res


def constraint_values(q: np.ndarray, S: np.ndarray, Y: np.ndarray, target: np.ndarray, centre: np.ndarray,
                      budget: float) -> tuple[float, float]:
    """The two constraint families at q: (max_k |Σq a_k| / Σq m, max_kr |Σq a_k (y_r − c_r)| / ηn).

    The first is RB; the second equals AB when centre = ȳ^q (the fixed point ``solve_m4`` finds)."""
    q = np.asarray(q, np.float64)
    mass = S.sum(1)
    A = S - mass[:, None] * target[None, :]
    Aq = A * q[:, None]
    qm = float(q @ mass)
    rep = float(np.max(np.abs(Aq.sum(0)))) / qm if qm > 0 else 0.0
    if Y.shape[1] == 0:
        return rep, 0.0
    assoc = Aq.T @ Y - np.outer(Aq.sum(0), centre)
    return rep, float(np.max(np.abs(assoc))) / (budget * len(q))


def _result(q, S, Y, t, target, budget, eps_rep, eps_assoc, x, dual, penalty, iters, evals, seconds) -> M4Result:
    before = summarize(np.ones(len(q)), S, Y, target)
    after = summarize(q, S, Y, target)
    rep, ass = constraint_values(q, S, Y, target, dual.centre, budget)
    status, message = judge(rep, ass, eps_rep, eps_assoc, x, dual, penalty)
    if status != "met":
        message += f"; achieved RB {after['rb']:.4f}, AB {after['ab']:.4f}"
    return M4Result(q=q, status=status, message=message, rb=after["rb"], ab=after["ab"], rb_before=before["rb"],
                    ab_before=before["ab"], shares=after["shares"], shares_before=before["shares"],
                    assoc=after["assoc"], assoc_before=before["assoc"], objective=0.5 * float(((q - t) ** 2).sum()),
                    target=target, budget=budget, eps_rep=eps_rep, eps_assoc=eps_assoc, dual=x,
                    centre=dual.centre.copy(), iterations=iters, evaluations=evals, seconds=seconds,
                    extra={"rep_constraint": rep, "assoc_constraint": ass})


def judge(rep: float, assoc: float, eps_rep, eps_assoc, x, dual: Dual, penalty: float) -> tuple[str, str]:
    """("met" | "infeasible" | "not converged", a sentence) from the constraint values and the multipliers."""
    bad = []
    if eps_rep is not None and not np.isnan(rep) and rep > eps_rep + FEAS_TOL:
        bad.append(f"first-order {rep:.4f} > ε_R {eps_rep:g}")
    if eps_assoc is not None and assoc > eps_assoc + FEAS_TOL:
        bad.append(f"second-order {assoc:.4f} > ε_A {eps_assoc:g}")
    if not bad:
        return "met", "every tolerance is met"
    if bool(np.any(x[1:] >= penalty * (1 - 1e-6))):
        return "infeasible", (f"the tolerances cannot all be met at budget η={dual.eta:g} ({'; '.join(bad)}); "
                              f"these are the best achievable values")
    return "not converged", f"the solver stopped before meeting the tolerances ({'; '.join(bad)})"


# ---------------------------------------------------------------------------------------------------
# streaming (chunked) variant for pools that do not fit in memory
# ---------------------------------------------------------------------------------------------------
@dataclass
class Policy:
    """The solved dual: turns any chunk of rows into weights q (row-local, so it streams)."""

    dual: Dual
    x: np.ndarray
    target: np.ndarray
    budget: float
    ubar: float | None

    def t(self, n: int, utility: np.ndarray | None) -> np.ndarray:
        if utility is None:
            return np.full(n, self.budget)
        return self.budget * np.asarray(utility, np.float64) / self.ubar

    def chunk(self, S, Y, utility=None) -> Chunk:
        Y = np.zeros((len(S), 0)) if Y is None else Y
        return Chunk.build(S, Y, self.t(len(S), utility), self.target)

    def weights(self, S: np.ndarray, Y: np.ndarray | None, utility: np.ndarray | None = None) -> np.ndarray:
        return self.dual.weights(self.x, self.chunk(S, Y, utility))


@dataclass
class StreamResult:
    policy: Policy
    n: int
    passes: int
    status: str
    message: str
    rb: float
    ab: float
    rb_before: float
    ab_before: float
    shares: np.ndarray
    shares_before: np.ndarray
    assoc: np.ndarray
    assoc_before: np.ndarray
    sum_q: float
    seconds: float


def solve_m4_streaming(chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]], *,
                       target: np.ndarray | None = None, budget: float = 0.9, eps_rep: float | None = 0.01,
                       eps_assoc: float | None = 0.01, sample_rows: int = 100_000, max_passes: int = 40,
                       penalty: float = 1e4, gtol: float = 1e-9, rng: np.random.Generator) -> StreamResult:
    """The same program over a pool read in mini-batches; ``chunks()`` re-reads the pool, yielding
    (S, Y, u or None) per batch.

    Pass 1 counts rows, sums utilities and keeps a uniform bottom-k subsample (random keys from ``rng``)
    of ``sample_rows`` rows; the in-memory solve on that sample gives a starting dual and centre (the dual
    is intensive, so it transfers). Then the Newton ascent runs on the whole pool, each dual evaluation
    being one pass over the batches (value, gradient and Gram are sums over rows), with the centre
    update between rounds, and Newton steps on ν for the exact budget; at most ``max_passes`` passes.
    Memory: one batch plus the subsample. The caller streams the weights with ``result.policy``.
    """
    t0 = time.perf_counter()
    n = 0
    usum = 0.0
    has_u = None
    keys, keep_S, keep_Y, keep_u = None, None, None, None
    m = c = None
    for S, Y, u in chunks():
        S = np.asarray(S, np.float64)
        Y = np.zeros((len(S), 0)) if Y is None else np.asarray(Y, np.float64)
        m, c = S.shape[1], Y.shape[1]
        n += len(S)
        has_u = u is not None
        if has_u:
            usum += float(np.sum(u))
        k = rng.random(len(S))
        u_arr = None if u is None else np.asarray(u, np.float64)
        if keys is None:
            keys, keep_S, keep_Y, keep_u = k, S, Y, u_arr
        else:
            keys = np.concatenate([keys, k])
            keep_S = np.concatenate([keep_S, S])
            keep_Y = np.concatenate([keep_Y, Y])
            keep_u = None if u_arr is None else np.concatenate([keep_u, u_arr])
        if len(keys) > sample_rows:
            sel = np.argpartition(keys, sample_rows - 1)[:sample_rows]
            keys, keep_S, keep_Y = keys[sel], keep_S[sel], keep_Y[sel]
            keep_u = None if keep_u is None else keep_u[sel]
    if n == 0:
        raise ValueError("no rows to balance")
    _, _, target = _check_inputs(keep_S, keep_Y, target, budget, eps_rep, eps_assoc)
    ubar = usum / n if has_u else None
    if has_u and not ubar > 0:
        raise ValueError(f"the mean utility must be positive (got {ubar:.4g})")
    sub_t = np.full(len(keep_S), float(budget)) if keep_u is None else budget * keep_u / ubar  # the pool's ū
    sub = solve_m4(keep_S, keep_Y, target=target, budget=budget, eps_rep=eps_rep, eps_assoc=eps_assoc,
                   reference=sub_t, penalty=penalty, gtol=gtol, rng=rng)
    del keys, keep_S, keep_Y, keep_u
    dual = Dual(m, c, n, float(budget), eps_rep, eps_assoc, sub.centre.copy())
    policy = Policy(dual, sub.dual.copy(), target, float(budget), ubar)
    passes = [1]

    def chunk_iter():
        passes[0] += 1
        for S, Y, u in chunks():
            yield policy.chunk(np.asarray(S, np.float64), None if Y is None else np.asarray(Y, np.float64), u)

    with single_thread_blas():
        for _ in range(4):
            left = max_passes - passes[0] - 4
            if left < 2:
                break
            x, _, _, _ = _newton(dual, chunk_iter, policy.x, penalty=penalty, max_iter=max(1, left // 2), gtol=gtol)
            policy.x = x
            if c == 0 or eps_assoc is None:
                break
            e = dual.evaluate(x, chunk_iter(), qy=True)
            new = e.qy / e.fsum[0]
            if float(np.max(np.abs(new - dual.centre))) <= 1e-7:
                break
            dual.centre = new
        for _ in range(3):  # Newton steps on ν for the exact budget: dΣq/dν = −#free/η
            e = dual.evaluate(policy.x, chunk_iter())
            gap = e.fsum[0] - dual.n0
            if abs(gap) <= 1e-9 * dual.n0 or e.free == 0:
                break
            policy.x = policy.x.copy()
            policy.x[0] += dual.eta * gap / e.free
        before = Moments(m, c)
        after = Moments(m, c)
        for S, Y, u in chunks():
            S = np.asarray(S, np.float64)
            Y = np.zeros((len(S), 0)) if Y is None else np.asarray(Y, np.float64)
            before.add(np.ones(len(S)), S, Y)
            after.add(policy.weights(S, Y, u), S, Y)
        passes[0] += 1
    rb, ab = after.rb(target), after.ab(target)
    status, message = judge(rb, ab, eps_rep, eps_assoc, policy.x, dual, penalty)
    if status != "met":
        message += f"; achieved RB {rb:.4f}, AB {ab:.4f}"
    return StreamResult(policy=policy, n=n, passes=passes[0], status=status, message=message, rb=rb, ab=ab,
                        rb_before=before.rb(target), ab_before=before.ab(target), shares=after.shares(),
                        shares_before=before.shares(), assoc=after.assoc(target), assoc_before=before.assoc(target),
                        sum_q=after.sum_q, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------
# MetaCLIP balancing probabilities (methods.md §4.3), for comparison at a matched budget
# ---------------------------------------------------------------------------------------------------
def metaclip_keep_prob(entry_ids: np.ndarray, text_ids: np.ndarray, counts: np.ndarray, n_texts: int,
                       t: float) -> np.ndarray:
    """P(keep x) = 1 − Π_{e ∈ matched(x)} (1 − min(1, t / count_e)); texts with no entry get 0.

    entry_ids, text_ids: the inverted index (one row per (entry, text) match); counts: count_e per entry id.
    """
    from audit.scores.metaclip import entry_probability, keep_probability

    return keep_probability(text_ids, entry_ids, entry_probability(counts, t), n_texts)


def metaclip_threshold_for_budget(entry_ids, text_ids, counts, n_texts: int, budget: float) -> tuple[float, np.ndarray]:
    """The t whose expected kept count Σ P(keep) is η·n (bisection on log t); (t, P(keep)).

    If even t = max count (every matched text kept) keeps fewer than η·n, returns that t: MetaCLIP never
    keeps texts without a matched entry.
    """
    want = budget * n_texts
    hi = float(max(counts.max(), 1)) if len(counts) else 1.0
    p_hi = metaclip_keep_prob(entry_ids, text_ids, counts, n_texts, hi)
    if p_hi.sum() <= want:
        return hi, p_hi
    lo = 1e-6
    for _ in range(80):
        mid = np.sqrt(lo * hi)
        if metaclip_keep_prob(entry_ids, text_ids, counts, n_texts, mid).sum() < want:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return hi, metaclip_keep_prob(entry_ids, text_ids, counts, n_texts, hi)
