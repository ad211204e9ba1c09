"""MicroBatcher: a lone request never pays the batching wait; requests still on their way are waited for."""

import threading
import time

import numpy as np
import pytest

from polymodal.serve.batching import MicroBatcher


class _Model:
    def __init__(self):
        self.passes = []

    def encode_text(self, items, batch_size=None):
        self.passes.append(len(items))
        return np.zeros((len(items), 4), np.float32)


def test_lone_request_runs_without_waiting_for_a_batch():
    model = _Model()
    batcher = MicroBatcher(model, max_batch=32, max_wait_ms=3000)
    try:
        start = time.monotonic()
        batcher.submit_texts(["a"]).result(10)
        assert time.monotonic() - start < 1.5  # far below the 3 s max wait
        assert model.passes == [1]
    finally:
        batcher.close()


def test_a_batch_waits_for_a_request_that_is_still_preprocessing():
    model = _Model()
    batcher = MicroBatcher(model, max_batch=32, max_wait_ms=3000)
    entered, release = threading.Event(), threading.Event()
    second = {}

    def slow_request():
        with batcher.incoming():  # decoding its image...
            entered.set()
            release.wait(5)
        second["future"] = batcher.submit_texts(["b"])

    t = threading.Thread(target=slow_request)
    t.start()
    try:
        entered.wait(5)
        first = batcher.submit_texts(["a"])
        time.sleep(0.2)
        assert not first.done()  # held for the request on its way
        release.set()
        t.join(5)
        first.result(10)
        second["future"].result(10)
        assert model.passes == [2]  # merged into one pass
    finally:
        release.set()
        batcher.close()


class _KeyedModel:
    """Rows derived from the input (a one-hot on its first letter), so a request given another's rows shows."""

    def __init__(self):
        self.passes = []  # (kind, items) per forward pass

    def _rows(self, kind, items):
        self.passes.append((kind, list(items)))
        if "bad" in items:
            raise ValueError("cannot embed 'bad'")
        return np.stack([np.eye(26, dtype=np.float32)[ord(str(x)[0]) - ord("a")] for x in items])

    def encode_text(self, items, batch_size=None):
        return self._rows("text", items)

    def encode_image(self, items, batch_size=None):
        return self._rows("image", items)


def _queued_behind_a_busy_worker(batcher, submit):
    """Hold the worker in a call, queue jobs with submit(), then release it: they are all waiting when it looks."""
    gate = threading.Event()
    busy = batcher.submit_call(gate.wait, 10)
    try:
        futures = submit()
    finally:
        gate.set()
    assert busy.result(10)
    return futures


def test_each_request_gets_its_own_rows_from_a_merged_pass():
    model = _KeyedModel()
    batcher = MicroBatcher(model, max_batch=32, max_wait_ms=0)
    try:
        texts = [["a"], ["b", "c"], ["d"]]
        futures = _queued_behind_a_busy_worker(batcher, lambda: [batcher.submit_texts(t) for t in texts])
        results = [f.result(10) for f in futures]
        assert model.passes == [("text", ["a", "b", "c", "d"])]  # one merged pass...
        for t, rows in zip(texts, results):  # ...sliced back to each request in order
            np.testing.assert_array_equal(rows, model.encode_text(t))
    finally:
        batcher.close()


def test_image_and_text_jobs_are_never_merged():
    model = _KeyedModel()
    batcher = MicroBatcher(model, max_batch=32, max_wait_ms=0)
    try:
        futures = _queued_behind_a_busy_worker(
            batcher, lambda: [batcher.submit_images(["i"]), batcher.submit_texts(["t"])]
        )
        image, text = (f.result(10) for f in futures)
        assert model.passes == [("image", ["i"]), ("text", ["t"])]
        assert image.argmax() == ord("i") - ord("a") and text.argmax() == ord("t") - ord("a")
    finally:
        batcher.close()


def test_joining_jobs_respect_max_batch():
    model = _Model()
    batcher = MicroBatcher(model, max_batch=2, max_wait_ms=0)
    try:
        futures = _queued_behind_a_busy_worker(batcher, lambda: [batcher.submit_texts([x]) for x in "abc"])
        assert [f.result(10).shape for f in futures] == [(1, 4)] * 3
        assert model.passes == [2, 1]
    finally:
        batcher.close()

    # A job that would overflow the batch waits for the next pass (it is not squeezed in past max_batch).
    model = _Model()
    batcher = MicroBatcher(model, max_batch=3, max_wait_ms=0)
    try:
        sizes = [2, 2, 1]
        futures = _queued_behind_a_busy_worker(batcher, lambda: [batcher.submit_texts(["x"] * n) for n in sizes])
        assert [len(f.result(10)) for f in futures] == sizes
        assert model.passes == [2, 3]
    finally:
        batcher.close()


def test_one_failing_request_does_not_fail_its_batch_mates():
    model = _KeyedModel()
    batcher = MicroBatcher(model, max_batch=32, max_wait_ms=0)
    try:
        ok, bad = _queued_behind_a_busy_worker(
            batcher, lambda: [batcher.submit_texts(["ok"]), batcher.submit_texts(["bad"])]
        )
        rows = ok.result(10)
        with pytest.raises(ValueError, match="cannot embed 'bad'"):
            bad.result(10)
        # merged first; when that pass failed, each request was retried alone
        assert model.passes == [("text", ["ok", "bad"]), ("text", ["ok"]), ("text", ["bad"])]
        np.testing.assert_array_equal(rows, model.encode_text(["ok"]))
    finally:
        batcher.close()
