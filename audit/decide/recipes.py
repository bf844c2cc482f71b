"""Recipes: keep rules combined the way the seed papers combine them, with a reason for every exclusion.

A recipe is one or more **steps** separated by ``then``; a step is one or more **terms** joined by ``&``
(or ``∩``, ``and``), which intersect. A term is a keep rule of audit.decide.selection (``SCORE>=V``, ``SCORE<=V``,
``SCORE:top=P``) or a **named filter** that expands to its own rules, each with a readable reason:

    basic          DataComp basic filter: words > 2, chars > 5, English, min side ≥ 200, aspect ≤ 3
    laion          B/32 CLIP score ≥ 0.28, English
    image_based    caption pre-filter, image in a target cluster  (image_based_<model> for one model)
    text_based     English, an entity word
    metaclip       some metadata entry matched, kept by the seeded MetaCLIP draw

Semantics (the papers'):

* Step 1 is exactly audit.selection.select: every rule, and every ``top=P`` threshold, is computed over the
  whole pool (DataComp: τ = the (int(N·P)+1)-th largest score; ties kept).
* In a later step, ``top=P`` keeps, among the samples left by the earlier steps, those scoring at least the
  (int(N·P)+1)-th largest of *their* scores, where N is still the whole pool: "negCLIPLoss top 30% then
  NormSim_∞ top 20% of the pool" keeps 20% of the pool, not 20% of the survivors (methods.md §2.3, §3.2).
  The reference negCLIPLoss code keeps exactly int(N·P) by argpartition; this rule keeps int(N·P) + 1 plus
  ties, the same convention as DataComp's ``--fraction`` everywhere else in this tool.
  Absolute rules in a later step apply to the survivors as usual.
* A sample excluded at one step is not tested by later steps; within a step it carries every rule it failed.

Example: ``negclip_datacomp_l14:top=0.3 then normsim_inf_datacomp_l14:top=0.2``;
``clip_l14_similarity_score:top=0.3 & image_based``; ``basic & laion``.
Every recipe has an equivalent list of plain rules over the whole pool (``Evaluation.as_rules``: later-step
fractions become the absolute thresholds they resolved to), which is what `--keep` and the Export page store.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from audit.decide.selection import Rule, RuleError, Selection, apply_rule, select

_STEP_SPLIT = re.compile(r"\s+then\s+|\s*->\s*|\s*>>\s*", re.IGNORECASE)
_TERM_SPLIT = re.compile(r"\s*&\s*|\s*∩\s*|\s+and\s+", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LabeledRule(Rule):
    """A rule that belongs to a named filter and carries that filter's reason text."""
    label: str = ""

    @property
    def reason(self) -> str:
        return self.label or Rule.reason.fget(self)


# named filter -> [(rule spec with {m} for the model suffix, reason)]
NAMED_FILTERS: dict[str, list[tuple[str, str]]] = {
    "basic": [("basic_words>=3", "basic: caption has ≤ 2 words"),
              ("basic_chars>=6", "basic: caption has ≤ 5 characters"),
              ("basic_english>=1", "basic: caption not English (py3langid)"),
              ("basic_min_side>=200", "basic: smaller image side < 200 px or unknown"),
              ("basic_aspect<=3", "basic: aspect ratio > 3 or unknown")],
    "laion": [("laion_b32>=0.28", "laion: B/32 CLIP score < 0.28"),
              ("laion_english>=1", "laion: caption not English (py3langid)")],
    "image_based": [("image_based_caption{m}>=1", "image-based{M}: caption pre-filter (English, > 1 word, > 5 chars)"),
                    ("image_based_target{m}>=1", "image-based{M}: image not in a target cluster")],
    "text_based": [("text_based_english>=1", "text-based: caption not English (py3langid)"),
                   ("text_based_entity>=1", "text-based: no entity word in the caption")],
    "metaclip": [("metaclip_matches>=1", "metaclip: no metadata entry matched"),
                 ("metaclip_keep>=1", "metaclip: not drawn (head entries are subsampled)")],
}
FILTER_TITLES = {"basic": "DataComp basic filter", "laion": "LAION-2B filter", "image_based": "DataComp image-based",
                 "text_based": "DataComp text-based", "metaclip": "MetaCLIP curation draw"}


def named_filters(names: Sequence[str]) -> list[str]:
    """The named-filter terms usable on a store with these score names (image_based per model)."""
    have = set(names)
    out = []
    for key, rules in NAMED_FILTERS.items():
        if key == "image_based":
            out += [n.replace("image_based_caption", "image_based") for n in sorted(have)
                    if n.startswith("image_based_caption")]
        elif all(Rule.parse(spec).score in have for spec, _ in rules):
            out.append(key)
    return out


def expand(term: str, names: Sequence[str] | None = None) -> list[Rule]:
    """One term -> its rules (a plain rule, or a named filter's labelled rules)."""
    term = term.strip()
    try:
        return [Rule.parse(term)]
    except RuleError:
        pass
    if not _NAME.match(term):
        raise RuleError(f"cannot read {term!r}: use SCORE>=VALUE, SCORE<=VALUE, SCORE:top=FRACTION or a named "
                        f"filter ({', '.join(NAMED_FILTERS)})")
    key, suffix = term, ""
    if term.startswith("image_based"):
        key, suffix = "image_based", term[len("image_based"):]
        if not suffix and names is not None:
            models = [n[len("image_based_caption"):] for n in names if n.startswith("image_based_caption")]
            if len(models) > 1:
                raise RuleError(f"image_based was computed for several models; name one: "
                                + ", ".join("image_based" + m for m in models))
            suffix = models[0] if models else ""
    if key not in NAMED_FILTERS:
        raise RuleError(f"{term!r} is neither a keep rule nor a named filter; write {term}>=VALUE, {term}<=VALUE "
                        f"or {term}:top=FRACTION, or use one of: {', '.join(NAMED_FILTERS)}")
    rules = []
    for spec, reason in NAMED_FILTERS[key]:
        r = Rule.parse(spec.format(m=suffix))
        rules.append(LabeledRule(r.score, r.op, r.value, reason.format(M=f" ({suffix.lstrip('_')})" if suffix else "")))
    if names is not None:
        missing = sorted({r.score for r in rules} - set(names))
        if missing:
            cli = {"basic": "basic", "laion": "laion", "image_based": "image-based", "text_based": "text-based",
                   "metaclip": "metaclip"}[key]
            raise RuleError(f"{term}: this store lacks {', '.join(missing)}; run `python -m audit score {cli}` first")
    return rules


def exact_spec(rule: Rule) -> str:
    """A rule as text that parses back to the same floats (repr, not :g)."""
    if rule.op == "top":
        return f"{rule.score}:top={rule.value!r}"
    return f"{rule.score}{rule.op}{rule.value!r}"


@dataclass
class Recipe:
    steps: list[list[Rule]]
    terms: list[list[str]]

    @classmethod
    def parse(cls, spec: str | Sequence[str], names: Sequence[str] | None = None) -> "Recipe":
        """From one spec, or several (--keep given more than once: they intersect; only one may have steps)."""
        specs = [spec] if isinstance(spec, str) else [s for s in spec if s and s.strip()]
        if not specs:
            return cls([], [])
        split = [[s for s in _STEP_SPLIT.split(x.strip()) if s.strip()] for x in specs]
        multi = [x for x in split if len(x) > 1]
        if len(specs) > 1 and multi:
            raise RuleError("write an ordered recipe (… then …) as one --keep spec; several --keep specs intersect")
        steps_txt = split[0] if len(specs) == 1 else [" & ".join(x[0] for x in split)]
        steps, terms = [], []
        for st in steps_txt:
            ts = [t for t in _TERM_SPLIT.split(st.strip()) if t.strip()]
            if not ts:
                raise RuleError(f"empty step in {' then '.join(steps_txt)!r}")
            rules = [r for t in ts for r in expand(t, names)]
            steps.append(rules)
            terms.append(ts)
        return cls(steps, terms)

    def __str__(self) -> str:
        return " then ".join(" & ".join(ts) for ts in self.terms)

    @property
    def rules(self) -> list[Rule]:
        return [r for st in self.steps for r in st]

    def scores(self) -> list[str]:
        return list(dict.fromkeys(r.score for r in self.rules))

    @property
    def ordered(self) -> bool:
        return len(self.steps) > 1

    def evaluate(self, columns: dict[str, np.ndarray], n: int | None = None) -> "Evaluation":
        """Keep mask, reasons and per-step counts over the whole pool."""
        if n is None:
            n = len(next(iter(columns.values()))) if columns else 0
        for r in self.rules:
            if r.score not in columns:
                raise RuleError(f"unknown score {r.score!r}; known: {', '.join(sorted(columns)) or 'none'}")
        if not self.steps:
            return Evaluation(keep=np.ones(n, bool), recipe=self, n=n)
        first = select(self.steps[0], columns, n=n)
        ev = Evaluation(keep=first.keep.copy(), failed=dict(first.failed), thresholds=dict(first.thresholds),
                        recipe=self, n=n)
        ev.equivalent = [exact_spec(r) for r in self.steps[0]]
        ev.step_kept = [int(first.keep.sum())]
        ev.applied = [(1, r, ">=" if r.op == "top" else r.op, first.thresholds[str(r)], r.reason) for r in self.steps[0]]
        for k, rules in enumerate(self.steps[1:], start=2):
            alive = ev.keep.copy()
            step_keep = alive.copy()
            for rule in rules:
                s = np.asarray(columns[rule.score], dtype=np.float64)
                if rule.op == "top":
                    tau = threshold_among(s, alive, rule.value, n)
                    reason = (rule.label if isinstance(rule, LabeledRule) and rule.label else
                              f"{rule.score} not in top {rule.value:.4g} of the pool (step {k})")
                    applied = Rule(rule.score, ">=", tau)
                else:
                    tau = rule.value
                    reason = f"{rule.reason} (step {k})"
                    applied = rule
                ok = apply_rule(applied, s, tau=tau)
                ev.thresholds[f"step {k}: {rule}"] = tau
                fail = alive & ~ok
                ev.failed[reason] = ev.failed.get(reason, np.zeros(n, bool)) | fail
                step_keep &= ok
                ev.equivalent.append(exact_spec(applied))
                ev.applied.append((k, rule, applied.op, tau, reason))
            ev.keep = step_keep
            ev.step_kept.append(int(step_keep.sum()))
        return ev


def threshold_among(scores: np.ndarray, alive: np.ndarray, fraction: float, n_total: int) -> float:
    """(int(n_total·p)+1)-th largest finite score among ``alive`` (its smallest when fewer; -inf if none)."""
    s = np.asarray(scores, dtype=np.float64)[alive]
    finite = s[~np.isnan(s)]
    k = int(n_total * fraction)
    if len(finite) == 0:
        return float("-inf")
    if k >= len(finite):
        return float(finite.min())
    return float(np.partition(finite, len(finite) - 1 - k)[len(finite) - 1 - k])


@dataclass
class Evaluation(Selection):
    """A Selection (keep, failed, thresholds) plus the recipe's steps."""
    recipe: Recipe | None = None
    n: int = 0
    step_kept: list[int] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    applied: list[tuple] = field(default_factory=list)   # (step, rule, op, threshold, reason) in order

    def rule_table(self, columns: dict[str, np.ndarray], i: int):
        """Every rule of the recipe for sample i: its threshold, the sample's value, passed or not (None
        when an earlier step had already excluded it)."""
        import pandas as pd

        rows = []
        for step, rule, op, tau, reason in self.applied:
            v = float(columns[rule.score][i])
            with np.errstate(invalid="ignore"):
                ok = bool(v <= tau) if op == "<=" else bool(v >= tau)
            rows.append({"step": step, "rule": str(rule), "keep if": f"{op} {tau:.6g}", "value": v,
                         "passed": ok})
        # a step after the one that excluded the sample is not tested
        failed_step = next((r["step"] for r in rows if r["passed"] is False), None)
        for r in rows:
            if failed_step is not None and r["step"] > failed_step:
                r["passed"] = None
        return pd.DataFrame(rows)

    def as_rules(self) -> list[str]:
        """Plain rules whose intersection over the whole pool keeps exactly the same samples."""
        return list(self.equivalent)

    def why(self, i: int) -> list[str]:
        """Every reason sample i (a row position) was excluded; [] when kept."""
        return [r for r, m in self.failed.items() if m[i]]

    def reason_table(self):
        """One row per reason: excluded (failed it), only_reason (failed nothing else), share of the pool."""
        import pandas as pd

        if not self.failed:
            return pd.DataFrame(columns=["reason", "excluded", "only_reason", "pool_share"])
        names = list(self.failed)
        mat = np.stack([self.failed[r] for r in names])
        n_failed = mat.sum(axis=0)
        rows = [{"reason": r, "excluded": int(mat[i].sum()), "only_reason": int((mat[i] & (n_failed == 1)).sum()),
                 "pool_share": float(mat[i].sum() / max(self.n, 1))} for i, r in enumerate(names)]
        return pd.DataFrame(rows)

    def funnel(self):
        """Samples left after each step."""
        import pandas as pd

        if self.recipe is None:
            return pd.DataFrame(columns=["step", "rules", "kept"])
        return pd.DataFrame({"step": range(1, len(self.step_kept) + 1),
                             "rules": [" & ".join(t) for t in self.recipe.terms], "kept": self.step_kept})


def evaluate_specs(specs: str | Sequence[str], columns: dict[str, np.ndarray], n: int | None = None) -> Evaluation:
    return Recipe.parse(specs, names=list(columns)).evaluate(columns, n=n)


def overlap(a: np.ndarray, b: np.ndarray) -> dict:
    """Kept-set overlap of two filters (bool masks over the same pool)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return overlap_counts(int(a.sum()), int(b.sum()), int((a & b).sum()))


def overlap_counts(kept_a: int, kept_b: int, both: int) -> dict:
    """The overlap of two kept sets from their sizes and the size of their intersection."""
    union = kept_a + kept_b - both
    return {"kept_a": kept_a, "kept_b": kept_b, "both": both, "only_a": kept_a - both, "only_b": kept_b - both,
            "jaccard": both / union if union else float("nan"),
            "share_of_a_in_b": both / kept_a if kept_a else float("nan")}


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Spearman ρ over the samples where both scores are finite (average ranks for ties); (ρ, n)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return float("nan"), n
    rx, ry = rankdata(x[ok]), rankdata(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return float("nan"), n
    return float(np.corrcoef(rx, ry)[0, 1]), n


def spearman_sorted(x: np.ndarray, y: np.ndarray, order_x: np.ndarray, order_y: np.ndarray) -> tuple[float, int]:
    """``spearman`` from each score's rows sorted by value (columns.score_order: the finite values, descending):
    the average ranks come from runs of equal values along the order, so no sort of N values is made. Equal to
    ``spearman`` (ranking both scores the other way round leaves ρ unchanged)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return float("nan"), n
    rx, ry = _average_ranks(x, order_x, ok), _average_ranks(y, order_y, ok)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan"), n
    return float(np.corrcoef(rx, ry)[0, 1]), n


def _average_ranks(values: np.ndarray, order: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """1-based average ranks (largest first) of values[ok], in row order, from the rows sorted by value."""
    rows = order[ok[order]]
    v = values[rows]
    new = np.ones(len(v), dtype=bool)
    new[1:] = v[1:] != v[:-1]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(values))
    ranks[rows] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks[ok]


def paper_scores(names: Sequence[str]) -> dict[str, str | None]:
    """The store's score for each role of the papers' recipes (the DataComp L/14 variant when there are several)."""
    def first(prefix: str) -> str | None:
        hits = [n for n in names if n.startswith(prefix)]
        return next((n for n in hits if n.endswith("datacomp_l14")), hits[0] if hits else None)

    return {"negclip": first("negclip_"), "normsim_inf": first("normsim_inf_"),
            "vas": first("vas_datacomp") or first("vas_"),
            "clip": "clip_l14_similarity_score" if "clip_l14_similarity_score" in names else first("clip_")}


def paper_presets(names: Sequence[str], filters: Sequence[str], *, none: str) -> dict[str, dict]:
    """The papers' recipes this store can run: title -> Filter preview control values (``none``: no THEN step)."""
    s = paper_scores(names)
    neg, nsi, vas_s, clip = s["negclip"], s["normsim_inf"], s["vas"], s["clip"]
    ib = next((f for f in filters if f.startswith("image_based")), None)
    presets: dict[str, dict] = {}
    if neg and nsi:
        presets["negCLIPLoss top 30% then NormSim∞ top 20% of the pool (Wang et al. 2024)"] = dict(
            score=neg, mode="top fraction", top_fraction=0.3, and_terms=[], then_score=nsi, then_top=0.2)
    if clip and ib:
        presets["CLIP score top 30% ∩ image-based (DataComp-1B recipe)"] = dict(
            score=clip, mode="top fraction", top_fraction=0.3, and_terms=[ib], then_score=none)
    if clip and vas_s:
        presets["CLIP score top 44% then VAS top 30% of the pool (VAS paper, DataComp small)"] = dict(
            score=clip, mode="top fraction", top_fraction=0.44, and_terms=[], then_score=vas_s, then_top=0.3)
    for f in ("basic", "laion", "text_based", "metaclip"):
        if f in filters:
            presets[FILTER_TITLES[f]] = dict(mode="off", and_terms=[f], then_score=none)
    return presets


def default_score(names: Sequence[str], catalog=None) -> str:
    """The score a page starts on: DataComp's CLIP L/14 score, else the first CLIP score, else the first score
    with more than two distinct values (a 0/1 filter flag makes "top 30%" keep whatever share is 1)."""
    s = paper_scores(names)
    if s["clip"]:
        return s["clip"]
    binary = set(FILTER_TITLES) | {n for n in names if n.startswith(("basic", "laion", "metaclip_keep", "m4_keep",
                                                                         "text_based", "image_based"))}
    kinds = {}
    if catalog is not None and len(catalog):
        kinds = dict(zip(catalog["name"], catalog["kind"]))
    return next((n for n in names if n not in binary and kinds.get(n) != "balance"), names[0])
