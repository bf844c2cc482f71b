"""Gold labels (a hand-labelled audit sample) and the measured accuracy of an imputed attribute against them.

``python -m audit labels import --store S --name NAME --file labels.csv [--attribute A]`` stores the file's
``uid,label`` rows as attribute NAME with method ``gold`` (not imputed), beside the imputed labels. The labels must
belong to the label set of the imputed attribute A they audit (default: NAME without a ``gold_`` prefix): its
stored labels plus ``unknown``. Unknown uids, duplicate uids, blank or foreign labels are refused with a message
and nothing is written. Other files (the simulator's truth.parquet) work with ``--uid-column``, ``--label-column``,
``--map OLD=NEW`` and a seeded ``--sample N``.

``python -m audit imputation --store S --attribute A [--attribute B] --gold NAME_OR_FILE [--out F.json]`` prints per
attribute: coverage (share of gold rows it labels, i.e. not ``unknown``/``multiple``), the confusion matrix
P(imputed = j | gold = i) with counts, precision and recall per class with Wilson 95% intervals, and Cohen's kappa.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audit.files import sha256_of
from audit.measure.fairness import UNLABELLED
from audit.measure.metrics import wilson

GOLD_METHOD = "gold"


class GoldError(ValueError):
    pass


def read_gold_file(path: str, *, uid_column: str = "uid", label_column: str = "label",
                   mapping: dict[str, str] | None = None, sample: int | None = None, seed: int = 0) -> pd.DataFrame:
    """uid, label (strings) from a CSV, JSON-lines or Parquet file; checked for shape, blanks and duplicates."""
    p = Path(path)
    if not p.is_file():
        raise GoldError(f"gold file not found: {path}")
    try:
        if p.suffix.lower() == ".parquet":
            raw = pd.read_parquet(p)
        elif p.suffix.lower() in (".jsonl", ".json"):
            raw = pd.read_json(p, lines=True, dtype=False)
        else:
            raw = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise GoldError(f"{path}: cannot read it as CSV/JSON lines/Parquet: {exc}") from exc
    missing = [c for c in (uid_column, label_column) if c not in raw.columns]
    if missing:
        raise GoldError(f"{path}: needs columns {uid_column!r} and {label_column!r}; missing {missing}; "
                        f"it has {list(raw.columns)[:12]}")
    frame = pd.DataFrame({"uid": raw[uid_column].astype(object), "label": raw[label_column].astype(object)})
    if sample is not None and sample < len(frame):
        frame = frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), size=sample, replace=False))]
    frame["uid"] = frame["uid"].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    frame["label"] = frame["label"].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                                        else str(v).strip())
    if mapping:
        frame["label"] = frame["label"].map(lambda v: mapping.get(v, v))
    problems = []
    blank_uid = int((frame["uid"].str.strip() == "").sum())
    if blank_uid:
        problems.append(f"{blank_uid} rows without a uid")
    blank = frame.index[frame["label"] == ""]
    if len(blank):
        problems.append(f"{len(blank)} rows without a label (first uid: {frame.loc[blank[0], 'uid']!r})")
    dup = frame["uid"][frame["uid"].duplicated(keep=False)].unique()
    if len(dup):
        problems.append(f"{len(dup)} uids appear more than once ({', '.join(map(repr, dup[:3]))}"
                        f"{', …' if len(dup) > 3 else ''}); give one gold label per sample")
    if problems:
        raise GoldError(f"{path}: " + "; ".join(problems) + "; nothing was written")
    if frame.empty:
        raise GoldError(f"{path}: no rows")
    return frame.reset_index(drop=True)


def gold_name(attribute: str) -> str:
    """The default name of the gold attribute that audits ``attribute``."""
    return f"gold_{attribute}"


def gold_labels(store, gold: str) -> pd.Series:
    """uid -> gold label: a gold attribute of the store (only the uids it annotates), or a uid,label file whose
    uids must all be samples of the store."""
    from audit.store.labels import label_frame

    if gold in store.attributes():
        return label_frame(store, [gold]).set_index("uid")[gold].loc[store.annotated_uids(gold)]
    frame = read_gold_file(gold)
    unknown = store.unknown_uids(frame["uid"].tolist())
    if unknown:
        raise GoldError(f"{len(unknown)} gold uids are not samples of this store ({unknown[0]!r}, …)")
    return frame.set_index("uid")["label"]


def imputed_labels(store, attribute: str, uids: pd.Index) -> pd.Series:
    """uid -> the imputed label of ``attribute`` ('unknown' where none) for the given uids."""
    from audit.store.labels import label_frame

    return label_frame(store, [attribute]).set_index("uid")[attribute].reindex(uids)


def check_against_store(store, frame: pd.DataFrame, attribute: str, name: str) -> list[str]:
    """Refuse unknown uids and labels outside the audited attribute's label set. Returns the label set."""
    if attribute not in store.attributes():
        raise GoldError(f"gold labels audit an imputed attribute: {attribute!r} is not in this store "
                        f"(attributes: {', '.join(store.attributes()) or 'none'}); give --attribute")
    if name == attribute:
        raise GoldError(f"--name {name!r} is the imputed attribute itself; use another name, e.g. gold_{attribute}")
    unknown = store.unknown_uids(frame["uid"].tolist())
    if unknown:
        raise GoldError(f"{len(unknown)} of {len(frame)} gold uids are not samples of this store "
                        f"({', '.join(map(repr, unknown[:3]))}{', …' if len(unknown) > 3 else ''}); nothing was written")
    allowed = sorted(set(store.attribute_labels(attribute)) | {"unknown"})
    foreign = sorted(set(frame["label"]) - set(allowed))
    if foreign:
        raise GoldError(f"labels outside {attribute}'s label set ({', '.join(allowed)}): {', '.join(foreign[:8])}"
                        "; map them with --map OLD=NEW; nothing was written")
    return allowed


def import_gold(store_path: str, name: str, path: str, *, attribute: str | None = None, uid_column: str = "uid",
                label_column: str = "label", mapping: dict[str, str] | None = None, sample: int | None = None,
                seed: int = 0) -> str:
    """Check and store a gold file as attribute ``name`` (one transaction: all rows or none). Returns a summary."""
    from audit.store import Store

    attribute = attribute or (name[len(gold_name("")):] if name.startswith(gold_name("")) else None)
    if not attribute:
        raise GoldError("say which imputed attribute the gold labels audit: --attribute A (or name them gold_A)")
    frame = read_gold_file(path, uid_column=uid_column, label_column=label_column, mapping=mapping, sample=sample,
                           seed=seed)
    sha = sha256_of(path)
    with Store.writer(store_path) as st:
        allowed = check_against_store(st, frame, attribute, name)
        method = f"{GOLD_METHOD}: hand labels for {attribute} from {Path(path).name} (sha256 {sha[:12]}…)"
        rows = pd.DataFrame({"uid": frame["uid"], "attribute": name, "label": frame["label"], "confidence": 1.0,
                             "method": method})
        with st.transaction():
            run_id = st.start_run("labels", name, params={"file": str(path), "sha256": sha, "attribute": attribute,
                                                          "map": mapping or {}, "sample": sample, "seed": seed})
            st.write_annotations(rows, run_id=run_id, method=method, imputed=False,
                                 descriptions={name: f"gold labels auditing {attribute}"})
            st.end_run(run_id, rows_in=len(frame), rows_out=len(frame))
    from audit.store.columns import refresh

    refresh(store_path, groups=[name])   # the pages' pool-order column of the gold attribute
    counts = frame["label"].value_counts()
    return (f"gold attribute {name}: {len(frame):,} labels for {attribute} ("
            + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f"); label set {', '.join(allowed)}")


# ---- accuracy ------------------------------------------------------------------------------------------------
@dataclass
class Accuracy:
    attribute: str
    method: str
    gold_n: int                      # gold rows that are samples with a gold label other than unknown
    covered: int                     # of those, imputed label known
    classes: list[str]
    counts: np.ndarray               # (gold class i, imputed class j) on covered rows
    kappa: float

    @property
    def coverage(self) -> float:
        return self.covered / self.gold_n if self.gold_n else float("nan")

    def confusion_rows(self) -> np.ndarray:
        """P(imputed = j | gold = i) over covered rows (NaN for a gold class with no covered row)."""
        tot = self.counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tot > 0, self.counts / np.maximum(tot, 1), np.nan)

    def per_class(self) -> pd.DataFrame:
        tp = np.diag(self.counts)
        pred, true = self.counts.sum(axis=0), self.counts.sum(axis=1)
        plo, phi = wilson(tp, pred)
        rlo, rhi = wilson(tp, true)
        with np.errstate(invalid="ignore", divide="ignore"):
            return pd.DataFrame({"class": self.classes, "gold_n": true, "imputed_n": pred, "correct": tp,
                                 "precision": np.where(pred > 0, tp / np.maximum(pred, 1), np.nan),
                                 "precision_ci_low": np.where(pred > 0, plo, np.nan),
                                 "precision_ci_high": np.where(pred > 0, phi, np.nan),
                                 "recall": np.where(true > 0, tp / np.maximum(true, 1), np.nan),
                                 "recall_ci_low": np.where(true > 0, rlo, np.nan),
                                 "recall_ci_high": np.where(true > 0, rhi, np.nan)})

    def to_json(self) -> dict:
        return {"attribute": self.attribute, "method": self.method, "gold_n": self.gold_n, "covered": self.covered,
                "coverage": self.coverage, "classes": self.classes, "counts": self.counts.tolist(),
                "p_imputed_given_gold": [[None if np.isnan(v) else float(v) for v in row]
                                         for row in self.confusion_rows()],
                "kappa": None if np.isnan(self.kappa) else self.kappa,
                "per_class": json.loads(self.per_class().to_json(orient="records"))}


def pair_counts(a: np.ndarray, b: np.ndarray, rows: list[str], cols: list[str]) -> np.ndarray:
    """(len(rows), len(cols)) counts of the label pairs (a[i], b[i])."""
    ri, ci = {c: i for i, c in enumerate(rows)}, {c: i for i, c in enumerate(cols)}
    counts = np.zeros((len(rows), len(cols)), dtype=np.int64)
    np.add.at(counts, (np.array([ri[v] for v in a], dtype=np.int64), np.array([ci[v] for v in b], dtype=np.int64)), 1)
    return counts


def accuracy(gold: pd.Series, imputed: pd.Series, *, attribute: str, method: str) -> Accuracy:
    """gold, imputed: labels aligned by uid. Rows whose gold label is unknown/multiple are left out; coverage
    counts the rest whose imputed label is known; the matrix and kappa use the covered rows."""
    g = gold.astype(str).to_numpy()
    m = imputed.fillna("unknown").astype(str).to_numpy()
    has_gold = ~np.isin(g, list(UNLABELLED))
    g, m = g[has_gold], m[has_gold]
    cov = ~np.isin(m, list(UNLABELLED))
    classes = sorted(set(g) | set(m[cov]))
    counts = pair_counts(g[cov], m[cov], classes, classes)
    n = counts.sum()
    if n:
        po = np.trace(counts) / n
        pe = float((counts.sum(0) / n) @ (counts.sum(1) / n))
        kappa = (po - pe) / (1 - pe) if pe < 1 else float("nan")
    else:
        kappa = float("nan")
    return Accuracy(attribute, method, int(has_gold.sum()), int(cov.sum()), classes, counts, float(kappa))


def format_accuracy(acc: Accuracy) -> list[str]:
    lines = [f"{acc.attribute} — {acc.method}",
             f"  gold samples: {acc.gold_n:,}; labelled by the imputation (coverage): {acc.covered:,} "
             f"({acc.coverage:.1%})" + (f"; Cohen's kappa {acc.kappa:.3f}" if np.isfinite(acc.kappa) else "")]
    if not acc.covered:
        return lines + ["  no gold sample has a known imputed label: no confusion matrix"]
    p = acc.confusion_rows()
    w = max(8, *(len(c) for c in acc.classes))
    lines.append("  P(imputed = column | gold = row), counts in brackets:")
    lines.append("  " + " " * w + "".join(f"{c:>{w + 12}}" for c in acc.classes))
    for i, c in enumerate(acc.classes):
        cells = "".join(f"{('-' if np.isnan(p[i, j]) else f'{p[i, j]:.3f}') + f' [{acc.counts[i, j]}]':>{w + 12}}"
                        for j in range(len(acc.classes)))
        lines.append(f"  {c:<{w}}{cells}")
    for r in acc.per_class().itertuples():
        prec = "-" if np.isnan(r.precision) else f"{r.precision:.3f} [{r.precision_ci_low:.3f}, {r.precision_ci_high:.3f}]"
        rec = "-" if np.isnan(r.recall) else f"{r.recall:.3f} [{r.recall_ci_low:.3f}, {r.recall_ci_high:.3f}]"
        lines.append(f"  {r._1:<{w}} precision {prec}  recall {rec}  (gold {r.gold_n}, imputed {r.imputed_n})")
    return lines
