"""Group commit (s46): index updates waiting for the writer are written as one. Each update reads and rewrites
vectors.faiss whole (0.5 s at 100k images), and they ran one at a time: 8 single-image uploads at once finished one
after another, and of 32 at once one got a 503 after --timeout. Now N queued uploads pay one read and one rewrite, and
each still gets its own reply."""

import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.errors import PolymodalError


def _png(i: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def service(lite, db, tmp_path):
    from polymodal.serve import ServeSettings
    from polymodal.serve.service import Service

    def make(name="db", timeout_s=30.0):
        own = tmp_path / name
        shutil.copytree(db, own)
        svc = Service(lite, own, ServeSettings(request_timeout_s=timeout_s))
        made.append(svc)
        return svc

    made = []
    yield make
    for svc in made:
        svc.close()


def _count_io(svc):
    """Counts the index's reads and rewrites of vectors.faiss (this service's index only)."""
    calls = {"load": 0, "save": 0}
    load, save = svc.index._load_vectors, svc.index._save_vectors

    def counted_load(*a):
        calls["load"] += 1
        return load(*a)

    def counted_save(*a):
        calls["save"] += 1
        return save(*a)

    svc.index._load_vectors, svc.index._save_vectors = counted_load, counted_save
    return calls


def _wait_for(condition, what):  # a state to reach, not a timing: the deadline only keeps a bug from hanging
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.005)


def _queued_behind_held_writer(svc, calls):
    """Runs calls [(method, arg)] in threads, queued in this order while the writer lock is held, then releases it.
    -> each call's reply (or exception)."""
    out = [None] * len(calls)

    def run(i, method, arg):
        try:
            out[i] = getattr(svc, method)(arg)
        except Exception as exc:  # noqa: BLE001
            out[i] = exc

    threads = []
    with svc._write_lock:
        for i, (method, arg) in enumerate(calls):
            threads.append(threading.Thread(target=run, args=(i, method, arg)))
            threads[-1].start()
            _wait_for(lambda: len(svc.writes._queue) == i + 1, f"queued {i + 1} writes")
    for t in threads:
        t.join(60)
    return out


def _without_thumbs(reply):
    return {**reply, "added": [{k: v for k, v in a.items() if k != "thumb"} for a in reply["added"]]}


def test_queued_uploads_are_one_index_write_and_each_gets_its_own_reply(service, gallery):
    known = sorted(p for p in gallery.rglob("*") if p.is_file())[0].read_bytes()  # bytes the index holds
    requests = [
        [("a.png", _png(1))],
        [("b.png", _png(2)), ("b-again.png", _png(2))],  # twice in one request
        [("a-copy.png", _png(1))],  # the bytes of an earlier request of the group
        [("old.png", known)],  # already indexed
        [("c.png", _png(3)), ("d.png", _png(4))],
    ]
    grouped = service("grouped")
    calls = _count_io(grouped)
    replies = _queued_behind_held_writer(grouped, [("add_images", r) for r in requests])
    assert calls == {"load": 1, "save": 1}  # was 5 and 4: one read per request, one rewrite per request that added
    assert grouped.writes.groups == 1
    assert not any(isinstance(r, Exception) for r in replies), replies

    alone = service("alone")  # the same requests one after another: the replies of before, ids included
    expected = [alone.add_images(r) for r in requests]
    total = alone.count()
    assert [r["count"] for r in replies] == [total] * len(requests)  # all committed together
    assert [_without_thumbs({**r, "count": 0}) for r in replies] == [_without_thumbs({**r, "count": 0})
                                                                      for r in expected]
    ids = {a["upload"]: a["id"] for r in replies for a in r["added"]}
    assert list(ids) == ["a.png", "b.png", "c.png", "d.png"] and sorted(ids.values()) == list(ids.values())
    assert replies[2]["skipped"] == [{"upload": "a-copy.png", "id": ids["a.png"],
                                      "reason": f"the same image is already in the index (id {ids['a.png']})"}]
    assert replies[1]["skipped"][0]["id"] == ids["b.png"] and "upload 'b.png' of this request" in \
        replies[1]["skipped"][0]["reason"]
    assert grouped.search(grouped.model.encode_image([Image.open(io.BytesIO(_png(3)))]), 1)[0][0]["id"] == ids["c.png"]


def test_a_failure_in_one_request_of_a_group_fails_only_that_request(service, monkeypatch):
    svc = service()
    encode = svc.model.encode_image

    def breaks_on_some(images, batch_size=None):
        # file names, not whole paths: a batch folder's random hex name may hold "bad" (1 run in 70 failed so)
        names = [Path(str(i)).name for i in (images if isinstance(images, list) else [images])]
        if any("boom" in n for n in names):
            raise RuntimeError("the model failed on this photo")  # not a decode error: the whole update fails
        if any("bad" in n for n in names):
            raise PolymodalError("cannot decode")  # a decode error: the index skips that file
        return encode(images, batch_size)

    monkeypatch.setattr(svc.model, "encode_image", breaks_on_some)
    calls = _count_io(svc)
    replies = _queued_behind_held_writer(svc, [
        ("add_images", [("one.png", _png(11))]),
        ("add_images", [("boom.png", _png(12))]),
        ("add_images", [("bad.png", _png(13)), ("fine.png", _png(14))]),
    ])
    assert isinstance(replies[1], RuntimeError)
    assert [a["upload"] for a in replies[0]["added"]] == ["one.png"]
    assert [a["upload"] for a in replies[2]["added"]] == ["fine.png"]
    assert [s["upload"] for s in replies[2]["skipped"]] == ["bad.png"] and "cannot decode" in replies[2]["skipped"][0]["reason"]
    assert calls["save"] == 2  # the group failed as a whole, then each request alone: the failing one wrote nothing
    stored = {p.name for p in svc.uploads.rglob("*") if p.is_file()}
    assert stored == {"000-one.png", "001-fine.png"}  # no file without a row


def test_queued_removals_are_one_write_and_an_id_is_removed_once(service):
    svc = service()
    added = svc.add_images([("x.png", _png(21)), ("y.png", _png(22))])["added"]
    x, y = (a["id"] for a in added)
    calls = _count_io(svc)
    replies = _queued_behind_held_writer(svc, [("remove_ids", [x]), ("remove_ids", [x, y]), ("remove_ids", [10**9])])
    assert calls["save"] == 1
    count = svc.count()
    assert replies == [{"removed": [x], "not_found": [], "count": count},
                       {"removed": [y], "not_found": [x], "count": count},
                       {"removed": [], "not_found": [10**9], "count": count}]
    assert not any(svc.uploads.rglob("*.png"))  # the uploaded files went with their rows


def test_a_queued_update_still_gets_503_past_the_timeout_and_leaves_the_queue(service):
    from polymodal.serve.limits import ApiError

    svc = service(timeout_s=0.2)
    with svc._write_lock:  # held the whole time: neither the first (waiting for the lock) nor the second starts
        replies = [None, None]

        def add(i):
            try:
                replies[i] = svc.add_images([(f"{i}.png", _png(30 + i))])
            except ApiError as exc:
                replies[i] = exc

        threads = [threading.Thread(target=add, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert [getattr(r, "status", None) for r in replies] == [503, 503]
    assert "waited over 0.2 s for the updates ahead of it" in replies[0].message
    assert svc.writes._queue == [] and not svc.writes._leading
    assert [a["upload"] for a in svc.add_images([("later.png", _png(40))])["added"]] == ["later.png"]
