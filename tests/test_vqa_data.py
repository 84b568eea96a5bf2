"""VQA canvases (mmfm/data/vqa.py) on synthetic sources the test makes: answers follow from the cells, the
splits share no source image, every question type occurs, items are reproducible."""
from collections import Counter

import numpy as np

from mmfm.data.vqa import CELLS, EMPTY, NAMES, TYPES, VQAConfig, ask, vqa_sets


def _sources(n=60, seed=0):
    rng = np.random.default_rng(seed)
    digits = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
    animals = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
    return digits, animals


def _sets(**kw):
    digits, animals = _sources()
    return vqa_sets(VQAConfig(n_train=200, n_val=20, n_test=50, **kw), seed=0, digits=digits, animals=animals)


def test_splits_use_disjoint_source_images():
    sets = _sets()
    used = {s: set() for s in sets}
    for s, ds in sets.items():
        for i in range(ds.n):
            used[s].update(ds.canvas(i)[2])
    assert used["train"] and used["test"] and used["val"]
    assert not used["train"] & used["test"] and not used["train"] & used["val"] and not used["val"] & used["test"]


def test_answers_follow_from_the_cells():
    rng = np.random.default_rng(0)
    labels = [3, EMPTY, 12, 3]  # three, empty, cat, three
    for _ in range(200):
        kind = TYPES[int(rng.integers(len(TYPES)))]
        q, a = ask(labels, kind, rng)
        if q.startswith("what is in the"):
            assert a == {c: (NAMES[lab] if lab != EMPTY else "nothing") for c, lab in zip(CELLS, labels)}[q.split()[4]]
        elif q == "how many digits are there?":
            assert a == "two"
        elif q == "how many animals are there?":
            assert a == "one"
        elif q.startswith("where is the"):
            assert q == "where is the cat?" and a == "bottom-left"  # the threes are not unique
        elif q.startswith("is there"):
            assert a == ("yes" if q.split()[-1][:-1] in ("three", "cat") else "no")
        else:  # the cat (bottom-left) has nothing left of it; above it is the three
            assert q == "what is above the cat?" and a == "three"


def test_every_type_occurs_and_items_are_reproducible():
    ds = _sets()["train"]
    kinds = Counter(ds[j].type for j in range(len(ds)))
    assert set(kinds) == set(TYPES) and min(kinds.values()) > 0.05 * len(ds)
    a, b = ds[17], ds[17]
    assert a.question == b.question and a.answer == b.answer and np.array_equal(a.image, b.image)
    assert a.image.shape == (1, 56, 56) and a.image.dtype.is_floating_point is False
    answers = Counter(ds[j].answer for j in range(len(ds)) if ds[j].type == "exists")
    assert answers["yes"] > 0.2 * sum(answers.values()) and answers["no"] > 0.2 * sum(answers.values())
