"""coco-yesno loads its `default` base on first use: threads answering at once on a fresh model (the server's
workers, a thread pool) load it once, not once each (4 threads built it 4 times)."""

import threading
import time

import polymodal
from polymodal.models import yesno


def test_threads_on_a_fresh_model_load_the_base_once(monkeypatch):
    model = polymodal.load("coco-yesno")
    base = model.base  # the real base, loaded once here
    fresh = yesno.YesNoModel(model.state, model.config)
    loads = []

    def slow_load(name):
        loads.append(name)
        time.sleep(0.2)  # long enough for every thread to reach the property while the first still loads
        return base

    monkeypatch.setattr(yesno, "load_base", slow_load)
    got = []
    threads = [threading.Thread(target=lambda: got.append(fresh.base)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["default"] and len(got) == 4 and all(b is base for b in got)


def test_a_model_with_its_lock_still_copies():
    import copy

    model = yesno.YesNoModel(polymodal.load("coco-yesno").state, polymodal.load("coco-yesno").config)
    twin = copy.deepcopy(model)  # TypeError: cannot pickle '_thread.lock' object
    assert twin.name == model.name and twin._base_lock is not model._base_lock
