"""Served text requests whose notes come from the tokenizer pass that embedded them (now) vs a second pass (before).

The notes: texts cut at the token limit, texts mostly in unknown word pieces. Same run, alternating turns.

    python benchmarks/serve_text_notes.py [--pairs ../shared/data/flickr8k-dev/pairs.jsonl] [--texts 32]
                                          [--requests 20] [--repeats 5]

`polymodal serve`'s app with `lite` over the sample gallery, in this process (Starlette's TestClient, one request at
a time): /v1/embed with --texts captions of --pairs per request, and /v1/search with one caption. The old path is
this checkout with the change undone: the notes get no encodings, so they tokenize the texts again (the batch for
the cut note, each text once more for the unknown-words note), as before. Prints one JSON line per turn (ms per
request, CPU ms per request), then per request kind the median over turns of old/new (and the range), and whether
both ways gave the same notes and vectors. Compare ratios: the machines here are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI (benchmarks/omp_wait_policy.py); before torch loads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_context.py (tests load scripts by path)
from old_and_new import spread  # noqa: E402
from run_context import SHARED_DATA, announce  # noqa: E402

PAIRS = SHARED_DATA / "flickr8k-dev" / "pairs.jsonl"


@contextmanager
def old_notes():
    """The app's notes as before: every text tokenized again (the functions given no encodings)."""
    import polymodal.serve.app as app

    saved = app.texts_notes, app.cut_texts_notes, app.unknown_words_note
    app.texts_notes = lambda model, texts, encodings=None: saved[0](model, texts)
    app.cut_texts_notes = lambda model, texts, one=None, encodings=None: saved[1](model, texts, one)
    app.unknown_words_note = lambda model, text, encoding=None: saved[2](model, text)
    try:
        yield
    finally:
        app.texts_notes, app.cut_texts_notes, app.unknown_words_note = saved


def turn(client, kind: str, captions: list[str], texts: int, requests: int) -> tuple[float, float, list]:
    """(ms per request, CPU ms per request, the replies' warnings and vectors) of ``requests`` requests."""
    replies = []
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(requests):
        if kind == "embed":
            start = (i * texts) % max(1, len(captions) - texts)
            r = client.post("/v1/embed", json={"texts": captions[start : start + texts]})
        else:
            r = client.post("/v1/search", json={"text": captions[i % len(captions)], "k": 10})
        if r.status_code != 200:
            raise SystemExit(f"/v1/{kind} answered {r.status_code}: {r.text[:300]}")
        body = r.json()
        replies.append((body["warnings"], body.get("vectors") or [h["id"] for h in body["hits"]]))
    return (1000 * (time.perf_counter() - wall) / requests, 1000 * (time.process_time() - cpu) / requests, replies)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(PAIRS), help="a captions JSONL file (its 'caption' fields are the texts)")
    ap.add_argument("--texts", type=int, default=32, help="texts per /v1/embed request")
    ap.add_argument("--requests", type=int, default=20, help="requests of each kind per turn")
    ap.add_argument("--repeats", type=int, default=5, help="turns of each way, alternating")
    ap.add_argument("--long", type=int, default=1, help="captions made past the 256-token limit (the cut note), in "
                    "each turn's first embed request and search")
    args = ap.parse_args(argv)
    if min(args.texts, args.requests, args.repeats) < 1 or args.long < 0:
        print("error: --texts, --requests and --repeats must be at least 1, --long at least 0", file=sys.stderr)
        return 2
    if not Path(args.pairs).is_file():
        print(f"error: no --pairs file at {args.pairs}", file=sys.stderr)
        return 2
    announce(__file__)
    import polymodal
    from fastapi.testclient import TestClient

    from polymodal.data.samples import write_sample_gallery
    from polymodal.index import ImageIndex
    from polymodal.serve import create_app

    captions = [json.loads(line)["caption"] for line in Path(args.pairs).read_text().splitlines() if line.strip()]
    captions = [c * 40 if i < args.long else c for i, c in enumerate(captions[: args.texts * args.requests])]
    model = polymodal.load("lite")
    ratios: dict[tuple[str, str], list[float]] = {}  # (kind, "ms" or "cpu_ms") -> old/new per turn
    same = True
    with tempfile.TemporaryDirectory(prefix="serve-notes-") as tmp:
        write_sample_gallery(Path(tmp) / "gallery")
        ImageIndex(Path(tmp) / "db").update(Path(tmp) / "gallery", model, progress=False)
        with TestClient(create_app(model, Path(tmp) / "db"), base_url="http://localhost") as client:
            turn(client, "embed", captions, args.texts, 2)  # warm-up: first calls allocate and fill caches
            for rnd in range(args.repeats):
                for kind in ("embed", "search"):
                    ms = {}
                    for way in (("old", "new") if rnd % 2 else ("new", "old")):  # each way goes first in turn
                        with old_notes() if way == "old" else _nothing():
                            ms[way], ms[f"{way}_cpu"], ms[f"{way}_replies"] = turn(client, kind, captions,
                                                                                  args.texts, args.requests)
                        print(json.dumps({"bench": "serve_text_notes", "kind": kind, "way": way, "turn": rnd,
                                          "ms_per_request": round(ms[way], 2),
                                          "cpu_ms_per_request": round(ms[f"{way}_cpu"], 2)}))
                    same &= ms["old_replies"] == ms["new_replies"]
                    ratios.setdefault((kind, "ms"), []).append(ms["old"] / ms["new"])
                    ratios.setdefault((kind, "cpu_ms"), []).append(ms["old_cpu"] / ms["new_cpu"])
    for (kind, what), values in ratios.items():
        print(json.dumps({"bench": "serve_text_notes", "kind": kind, "texts": args.texts if kind == "embed" else 1,
                          "ratio": f"{what}_old/{what}_new", **spread(values), "turns": len(values),
                          "same_replies": same}))
    return 0


@contextmanager
def _nothing():
    yield


if __name__ == "__main__":
    sys.exit(main())
