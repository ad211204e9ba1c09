"""classify(): labels that score the same keep the order they were given in (with top_k, the first given are
shown), not the order of an unstable sort."""

import numpy as np

from polymodal.apps.zeroshot import rank_labels


def test_tied_labels_keep_their_given_order() -> None:
    labels = [f"label{i}" for i in range(40)] + ["best"]
    label_emb = np.tile([1.0, 0.0], (41, 1))
    label_emb[-1] = [0.0, 1.0]
    ranked = rank_labels(np.array([[0.6, 0.8]]), label_emb, labels, 100.0)[0]
    assert [name for name, _ in ranked] == ["best"] + labels[:40]
    assert [name for name, _ in rank_labels(np.array([[0.6, 0.8]]), label_emb, labels, 100.0, top_k=3)[0]] == \
        ["best", "label0", "label1"]
