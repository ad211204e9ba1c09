"""A batch waiting for a request that fails before it submits (a bad image) stops waiting at once."""

import threading
import time

import numpy as np
import pytest

from polymodal.serve.batching import MicroBatcher


class _Model:
    def encode_text(self, texts, batch_size=None):
        return np.zeros((len(texts), 2), np.float32)


def test_a_failed_incoming_request_wakes_the_waiting_batch():
    batcher = MicroBatcher(_Model(), max_batch=8, max_wait_ms=3000)
    entered, fail = threading.Event(), threading.Event()

    def bad_request():
        with pytest.raises(ValueError):
            with batcher.incoming("text"):  # decoding, about to submit...
                entered.set()
                fail.wait(5)
                raise ValueError("not an image")  # ... and never does

    thread = threading.Thread(target=bad_request)
    thread.start()
    entered.wait(5)
    future = batcher.submit_texts(["a dog"])  # its batch waits for the request on its way
    time.sleep(0.2)
    assert not future.done()
    failed_at = time.monotonic()
    fail.set()
    assert future.result(timeout=5).shape == (1, 2)
    assert time.monotonic() - failed_at < 1.5  # not the 3 s max_wait_ms
    thread.join(5)
    batcher.close()
