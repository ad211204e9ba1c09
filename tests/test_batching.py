"""MicroBatcher: a lone request never pays the batching wait; requests still on their way are waited for."""

import threading
import time

import numpy as np

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
