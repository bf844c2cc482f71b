"""Caption-based scores: MetaCLIP matching and balancing, the text-based filter, the language detector."""
import numpy as np
import pytest

from audit.scores.metaclip import (draw, entry_probability, keep_probability, match, match_naive,
                                   metaclip_columns, pool_ngrams, spacing)
from audit.scores.text_based import ERR_WORDNET, EntityError, read_entities, word_match, wordnet_match


# ---- MetaCLIP (methods.md §4.2, §4.3, §9 oracles) --------------------------------------------------------
def test_spacing_and_matching_oracles():
    assert spacing("a dog.") == " a dog .  "                # the reference pads, then wraps punctuation
    entries = ["dog", "hot dog", "Dog"]
    tids, eids = match(["a dog.", "hotdog", "Dog", "a hot dog, sir"], entries)
    got = {t: sorted(eids[tids == t].tolist()) for t in set(tids.tolist())}
    assert got == {0: [0], 2: [2], 3: [0, 1]}                 # "hotdog" matches nothing; case-sensitive


def test_aho_corasick_equals_the_naive_reference_matcher():
    rng = np.random.default_rng(0)
    vocab = ["a", "dog", "cat", "red", "red car", "car", "New York", "york", ".", "x"]
    entries = ["dog", "red car", "car", "New York", "a", "cat", "at"]
    caps = [" ".join(rng.choice(vocab, size=rng.integers(1, 7))) + rng.choice(["", ".", "!", ","]) for _ in range(300)]
    tids, eids = match(caps, entries)
    for i, c in enumerate(caps):
        assert set(eids[tids == i].tolist()) == match_naive(c, entries), c


def test_probability_by_hand():
    # t = 1: counts a = 4 -> p = 0.25, b = 2 -> p = 0.5, c = 1 -> p = 1
    p = entry_probability(np.array([4, 2, 1]), 1.0)
    assert p.tolist() == [0.25, 0.5, 1.0]
    tids = np.array([0, 0, 1, 2, 2])
    eids = np.array([0, 1, 0, 0, 2])
    got = keep_probability(tids, eids, p, 4)                   # text 3 matches nothing
    assert got == pytest.approx([1 - 0.75 * 0.5, 0.25, 1.0, 0.0])


def test_any_of_probability_matches_a_direct_simulation():
    p = np.array([0.25, 0.5, 0.1])
    tids = np.array([0, 0, 1, 2, 2, 2])
    eids = np.array([0, 1, 0, 0, 1, 2])
    exact = keep_probability(tids, eids, p, 4)
    rng = np.random.default_rng(0)
    trials = 20_000
    freq = sum(draw(tids, eids, p, 4, rng).astype(int) for _ in range(trials)) / trials
    # 3 SE of a Bernoulli mean at 20k trials is ≤ 0.011
    assert np.abs(freq - exact).max() < 0.011
    assert freq[3] == 0.0                                      # unmatched: never kept
    assert exact[2] == pytest.approx(1 - 0.75 * 0.5 * 0.9)


def test_keyed_draw_is_a_function_of_seed_uid_and_entry_and_keeps_at_the_exact_rate():
    """draw_keyed's uniforms depend on (seed, uid, entry) only: a sample's decision is the same in any batch; over
    many seeds each text is kept at keep_probability (the same oracle as the sequential draw above)."""
    from audit.scores.base import keyed_uniforms
    from audit.scores.metaclip import draw_keyed

    p = np.array([0.25, 0.5, 0.1])
    tids = np.array([0, 0, 1, 2, 2, 2])
    eids = np.array([0, 1, 0, 0, 1, 2])
    uids = ["a", "b", "c", "d"]
    exact = keep_probability(tids, eids, p, 4)
    trials = 20_000
    freq = sum(draw_keyed(uids, tids, eids, p, seed).astype(int) for seed in range(trials)) / trials
    assert np.abs(freq - exact).max() < 0.011 and freq[3] == 0.0        # 3 SE at 20k trials; unmatched never kept
    u = keyed_uniforms(uids, tids, eids, 7)
    # "c" alone in a batch of its own (text id 0 there): the same uniforms for its pairs
    assert keyed_uniforms(["c"], np.array([0, 0, 0]), np.array([0, 1, 2]), 7).tolist() == u[3:].tolist()
    assert not np.array_equal(u, keyed_uniforms(uids, tids, eids, 8))       # another seed, another draw
    big = keyed_uniforms([f"u{i}" for i in range(50_000)], np.arange(50_000), np.zeros(50_000, np.int64), 1)
    assert 0 <= big.min() and big.max() < 1 and abs(big.mean() - 0.5) < 0.005    # uniform: SE 0.0013
    assert np.histogram(big, bins=10, range=(0, 1))[0].min() > 4_700               # each tenth ~5,000 ± 67


def test_metaclip_columns_head_entries_are_subsampled():
    caps = ["a dog"] * 8 + ["a rare bird", "nothing here"]
    entries = ["dog", "rare bird", "zebra"]
    cols, counts = metaclip_columns(caps, entries, t=2, rng=np.random.default_rng(0))
    assert counts.tolist() == [8, 1, 0]
    assert cols["metaclip_p"][:8] == pytest.approx([0.25] * 8)          # t / count = 2/8
    assert cols["metaclip_p"][8] == 1.0 and cols["metaclip_keep"][8] == 1.0   # tail entry: always kept
    assert cols["metaclip_p"][9] == 0.0 and cols["metaclip_keep"][9] == 0.0
    assert cols["metaclip_matches"].tolist() == [1] * 9 + [0]
    assert cols["metaclip_min_count"][0] == 8 and np.isnan(cols["metaclip_min_count"][9])


def test_pool_ngrams():
    caps = ["a red car.", "a red car", "the red car", "blue"]
    got = pool_ngrams(caps, min_count=2)
    assert got == ["a", "a red", "car", "red", "red car"]      # "." dropped, "the"/"blue" too rare


# ---- text-based -------------------------------------------------------------------------------------------
def test_text_based_word_match_and_lists(tmp_path):
    assert word_match(["A Dog, sitting", "dogs", "the dog."], ["dog"]).tolist() == [False, False, False]
    assert word_match(["A Dog sitting", "hotdog dog"], ["dog"]).tolist() == [True, True]
    f = tmp_path / "ents.txt"
    f.write_text("dog\ncat\n")
    assert read_entities(str(f)) == ("words", ["dog", "cat"])
    w = tmp_path / "wn.txt"
    w.write_text("n01440764\nn02084071\n")
    kind, ids = read_entities(str(w))
    assert kind == "wordnet" and ids == ["n01440764", "n02084071"]
    kind, words = read_entities("imagenet-words")
    assert kind == "words" and "dog" in words and "of" not in words and len(words) > 1000


def test_wordnet_without_nltk_is_a_clear_message():
    try:
        import nltk  # noqa: F401
        pytest.skip("nltk is installed here")
    except ImportError:
        pass
    with pytest.raises(EntityError, match="nltk"):
        wordnet_match(["a dog"], ["n02084071"], path="ids.txt")
    assert "wordnet" in ERR_WORDNET


# ---- language -------------------------------------------------------------------------------------------
def test_batched_language_detection_equals_py3langid():
    import py3langid

    from audit import lang

    texts = ["a brown dog running in the park", "una foto de perro", "ein Bild von Hund im Sommer", "IMG_1234",
             "", "HELLO WORLD THIS IS LOUD", "фото кошки", "猫の写真", "a\nnew line", "!!!", "DSC0001.JPG"]
    lang.clear_memo()
    got = lang.detect(texts)
    want = [py3langid.classify(t.replace("\n", " "))[0] for t in texts]
    assert got.tolist() == want
    assert lang.is_english(["a brown dog running in the park"]).tolist() == [True]


def test_text_based_takes_missing_captions_as_empty():
    import pandas as pd

    caps = pd.Series(["a dog", None, float("nan"), pd.NA, "dog"], dtype=object).tolist()
    assert word_match(caps, ["dog"]).tolist() == [True, False, False, False, True]
