"""Gold labels: import with every refusal of bad input (nothing half-written), and imputation accuracy numbers
computed by hand (and Cohen's kappa cross-checked with scikit-learn)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from audit.measure.gold import accuracy
from audit.store import Store


def test_accuracy_by_hand():
    gold = pd.Series(["man", "man", "woman", "woman", "woman", "unknown"])
    imputed = pd.Series(["man", "woman", "woman", "woman", "unknown", "man"])
    acc = accuracy(gold, imputed, attribute="caption_gender", method="lexicon")
    # gold known on 5 rows; the imputation labels 4 of them
    assert (acc.gold_n, acc.covered, acc.coverage) == (5, 4, 0.8)
    assert acc.classes == ["man", "woman"]
    np.testing.assert_array_equal(acc.counts, [[1, 1], [0, 2]])
    np.testing.assert_allclose(acc.confusion_rows(), [[0.5, 0.5], [0.0, 1.0]])
    pc = acc.per_class().set_index("class")
    np.testing.assert_allclose(pc["precision"], [1.0, 2 / 3])
    np.testing.assert_allclose(pc["recall"], [0.5, 1.0])
    # po = 3/4; pe = (1/4)(2/4) + (3/4)(2/4) = 1/2; kappa = (3/4 - 1/2) / (1/2) = 1/2
    assert acc.kappa == pytest.approx(0.5)
    from sklearn.metrics import cohen_kappa_score

    assert acc.kappa == pytest.approx(cohen_kappa_score(["man", "man", "woman", "woman"],
                                                        ["man", "woman", "woman", "woman"]))
    # Wilson interval of recall 1/2 (n = 2): the same function the report uses
    from audit.measure.metrics import wilson

    lo, hi = wilson(1, 2)
    assert (pc.loc["man", "recall_ci_low"], pc.loc["man", "recall_ci_high"]) == pytest.approx((float(lo), float(hi)))


@pytest.fixture
def store(make_store):
    from audit.annotators.base import run_annotator

    caps = ["a woman smiling", "a man walking", "a woman and her dog", "a tree", "a man", "portrait of a woman"]
    path = make_store([{"uid": f"u{i}", "caption": c} for i, c in enumerate(caps)])
    run_annotator("caption", path, params={}, echo=lambda s: None)
    return path


def _write(tmp_path, rows, name="g.csv"):
    p = tmp_path / name
    pd.DataFrame(rows, columns=["uid", "label"]).to_csv(p, index=False)
    return str(p)


@pytest.mark.parametrize("rows,message", [
    ([("u0", "woman"), ("nope", "man")], "not samples of this store"),
    ([("u0", "woman"), ("u0", "man")], "appear more than once"),
    ([("u0", "woman"), ("u1", "robot")], "outside caption_gender's label set"),
    ([("u0", "woman"), ("u1", "")], "without a label"),
])
def test_bad_gold_files_are_refused_and_nothing_is_written(store, tmp_path, capsys, rows, message):
    f = _write(tmp_path, rows)
    assert main(["labels", "import", "--store", store, "--name", "gold_caption_gender", "--file", f]) == 1
    assert message in capsys.readouterr().err
    with Store.reader(store) as st:
        assert "gold_caption_gender" not in st.attributes()
        assert st.scalar("SELECT count(*) FROM runs WHERE stage = 'labels'") == 0


def test_missing_columns_and_unknown_attribute(store, tmp_path, capsys):
    p = tmp_path / "x.csv"
    p.write_text("id,lab\nu0,woman\n")
    assert main(["labels", "import", "--store", store, "--name", "gold_caption_gender", "--file", str(p)]) == 1
    assert "needs columns 'uid' and 'label'" in capsys.readouterr().err
    f = _write(tmp_path, [("u0", "woman")])
    assert main(["labels", "import", "--store", store, "--name", "mygold", "--file", f]) == 1
    assert "--attribute" in capsys.readouterr().err


def test_import_then_imputation_report(store, tmp_path, capsys):
    # hand labels: u1's caption says man but the annotator is right; u3 (a tree) has no gender; u5 labelled man
    f = _write(tmp_path, [("u0", "woman"), ("u1", "man"), ("u3", "none"), ("u4", "man"), ("u5", "man")])
    assert main(["labels", "import", "--store", store, "--name", "gold_caption_gender", "--file", f,
                 "--map", "none=unknown"]) == 0
    with Store.reader(store) as st:
        cat = st.attribute_catalog().set_index("attribute")
        assert not bool(cat.loc["gold_caption_gender", "imputed"])
        assert st.scalar("SELECT count(*) FROM annotations WHERE attribute = 'gold_caption_gender'") == 5
    out = tmp_path / "acc.json"
    assert main(["imputation", "--store", store, "--attribute", "caption_gender", "--gold", "gold_caption_gender",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "caption_gender" in text and "coverage" in text
    got = json.loads(out.read_text())["attributes"][0]
    # gold known: u0 woman, u1 man, u4 man, u5 man (u3 is unknown); the lexicon says woman, man, man, woman
    assert (got["gold_n"], got["covered"]) == (4, 4)
    assert got["classes"] == ["man", "woman"] and got["counts"] == [[2, 1], [0, 1]]
    assert got["kappa"] == pytest.approx((3 / 4 - (3 / 4 * 2 / 4 + 1 / 4 * 2 / 4)) / (1 - 0.5))
