"""Stop-43 speed review (speed2): the beam search's top-k per step by argmax passes instead of np.argpartition
(~40 ms a step over 16 photos x beam 3 x 30,522 pieces, ~15% of `polymodal caption`), with the same choices."""

import numpy as np

from polymodal.models import beam_search as bs


def test_largest_finds_the_k_largest_columns_and_leaves_the_scores_as_they_were():
    rng = np.random.default_rng(0)
    for _ in range(100):
        rows, n = int(rng.integers(1, 12)), int(rng.integers(3, 400))
        k = int(rng.integers(1, min(n, bs.MAX_BEAM) + 1))
        x = rng.standard_normal((rows, n)).astype(np.float32)
        x[rng.random((rows, n)) < 0.5] = -np.inf  # banned pieces and dead beams
        x[:, :k] = np.maximum(x[:, :k], -5.0)  # a beam search always has k candidates above -inf
        before = x.copy()
        cols = bs.largest(x, k)
        assert np.array_equal(x, before)
        assert cols.shape == (rows, k) and all(len(set(r)) == k for r in cols.tolist())
        want = -np.sort(np.partition(-before, k - 1, axis=1)[:, :k], 1)
        assert np.array_equal(np.sort(np.take_along_axis(before, cols, 1), 1)[:, ::-1], want)


def test_a_row_with_fewer_than_k_scores_above_minus_infinity_still_gets_k_different_columns():
    x = np.full((2, 10), -np.inf, np.float32)
    x[:, 3] = 1.0
    cols = bs.largest(x, 3)
    assert [c[0] for c in cols.tolist()] == [3, 3] and all(len(set(r)) == 3 for r in cols.tolist())


def _search(monkeypatch, slow: bool):
    if slow:  # HEAD's selection
        monkeypatch.setattr(bs, "largest", lambda x, k: np.argpartition(-x, k - 1, axis=1)[:, :k])
    table = np.random.default_rng(1).standard_normal((997, 300)).astype(np.float32) * 4  # 300 pieces ([SEP] is 102)

    def step(ids, origin):  # logits that depend on the photo (row // beam) and the whole sequence so far
        return table[((ids * np.arange(1, ids.shape[1] + 1)).sum(1) + 7 * (np.arange(len(ids)) // 5)) % len(table)]

    out = bs.beam_search(step, images=4, beam=5, max_tokens=12, no_repeat=3)
    assert len({tuple(c) for c in out}) > 1 and min(map(len, out)) < 12  # photos differ; captions end by [SEP]
    return out


def test_beam_search_writes_what_it_wrote_with_argpartition_without_calling_it(monkeypatch):
    slow = _search(monkeypatch, slow=True)
    monkeypatch.undo()

    def refuse(*a, **k):
        raise AssertionError("np.argpartition on every step: 10x slower than k argmax passes over the candidates")

    monkeypatch.setattr(bs.np, "argpartition", refuse)
    assert _search(monkeypatch, slow=False) == slow


def test_nan_scores_are_taken_last_as_argpartition_took_them():
    x = np.array([[0.5, np.nan, 2.0, 1.0, np.nan]], np.float32)
    assert sorted(bs.largest(x.copy(), 2)[0].tolist()) == [2, 3]
