"""MicroBatcher.close() while work still arrives (an index add running at shutdown): one model thread, and it stops."""

import threading
import time

import numpy as np

from polymodal.serve.batching import MicroBatcher


class _SlowModel:
    def __init__(self):
        self.running = 0
        self.most_at_once = 0
        self.threads = set()
        self._lock = threading.Lock()

    def encode_text(self, items, batch_size=None):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.threads.add(threading.current_thread())
        time.sleep(0.3)
        with self._lock:
            self.running -= 1
        return np.zeros((len(items), 4), np.float32)


def _model_threads():
    return [t for t in threading.enumerate() if t.name == "polymodal-model"]


def test_work_submitted_while_closing_is_done_and_the_thread_still_stops():
    model = _SlowModel()
    batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0)
    first = batcher.submit_texts(["a"])
    time.sleep(0.05)  # the model thread is busy with "a"
    closer = threading.Thread(target=batcher.close, kwargs={"timeout": 3})
    closer.start()
    time.sleep(0.05)  # close() has queued its stop
    late = batcher.submit_texts(["b"])
    assert late.result(5).shape == (1, 4) and first.result(5).shape == (1, 4)
    start = time.monotonic()
    closer.join(5)
    assert time.monotonic() - start < 2  # close() did not wait out its timeout
    assert model.most_at_once == 1 and len(model.threads) == 1
    deadline = time.monotonic() + 2
    while _model_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _model_threads()  # no model thread left blocked on the queue


def test_a_closed_batcher_starts_again_on_the_next_submit():
    model = _SlowModel()
    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0)
    batcher.submit_texts(["a"]).result(5)
    batcher.close(timeout=3)
    assert not _model_threads()
    assert batcher.submit_texts(["b"]).result(5).shape == (1, 4)  # e.g. a second app lifespan
    batcher.close(timeout=3)
    batcher.close(timeout=3)  # twice is harmless
    assert not _model_threads()


def test_two_closes_while_the_model_is_busy_both_return_and_the_thread_stops():
    model = _SlowModel()
    batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0)
    busy = batcher.submit_texts(["a"])
    time.sleep(0.05)
    closers = [threading.Thread(target=batcher.close, kwargs={"timeout": 3}) for _ in range(2)]
    start = time.monotonic()
    for c in closers:
        c.start()
    for c in closers:
        c.join(5)
    assert time.monotonic() - start < 2 and busy.result(1).shape == (1, 4)
    deadline = time.monotonic() + 2
    while _model_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _model_threads()  # not two stops putting each other back in the queue for ever
