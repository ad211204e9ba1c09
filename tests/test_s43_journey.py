"""Following README.md with one's own captioned photos (COCO / Karpathy caption files, `~` paths, a keyless
server behind a name): what broke on the way."""

import json
import logging
from pathlib import Path

import pytest

from polymodal.cli import build_parser, expand_home
from polymodal.data.jsonl import counting_skipped
from polymodal.data.pairs import read_pair_source
from test_s43_caption_json import _photos  # numbered 40-px JPEGs


def test_search_texts_file_expands_home(monkeypatch, tmp_path):
    """`search --texts=~/captions.txt`: a file, like every other path option ("file not found: ~/captions.txt")."""
    monkeypatch.setenv("HOME", str(tmp_path))
    args = build_parser().parse_args(["search", "--texts=~/captions.txt", "a dog"])
    expand_home(args)
    assert args.texts == str(tmp_path / "captions.txt") and args.query == "a dog"


def test_coco_layout_with_its_first_photo_missing(tmp_path):
    """One photo missing from val2017/ (the first listed) is one skipped row, not every row of the file."""
    names = _photos(tmp_path / "val2017", 3)
    (tmp_path / "val2017" / names[0]).unlink()
    document = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                "annotations": [{"image_id": i, "caption": f"photo {i}"} for i in range(3)]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps(document))
    pairs = read_pair_source(tmp_path / "annotations" / "captions_val2017.json")
    assert [p.caption for p in pairs.pairs] == ["photo 1", "photo 2"]
    assert len(pairs.skipped) == 1 and names[0] in pairs.skipped[0][1]


def _karpathy(tmp_path: Path) -> Path:
    names = _photos(tmp_path / "imgs", 3)
    document = {"images": [{"filepath": "imgs", "filename": n, "split": ("train", "restval", "test")[i],
                            "sentences": [{"raw": f"photo {i}"}]} for i, n in enumerate(names)]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(document))
    return path


def test_training_on_a_karpathy_file_is_told_how_to_keep_its_training_split(tmp_path, caplog):
    """Training reads every split, test photos included; the warning named only `eval ... --split`. It now names
    `train ... --split train,restval` (added later in stop 43) and, for `export`, a filter that keeps Karpathy's
    format and its training splits."""
    path = _karpathy(tmp_path)
    with caplog.at_level(logging.WARNING):
        read_pair_source(path)  # as `train contrastive --pairs dataset_coco.json` reads it
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "pass `train ... --split train,restval`" in message and "--val-split test" in message
    assert """.images |= map(select(.split == "train" or .split == "restval"))""" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING), counting_skipped():  # an `eval` without --split: as before
        read_pair_source(path)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "--split test" in message and "train ..." not in message


@pytest.mark.parametrize("given", ["box:8765", "http://Box:8765/"])
def test_allow_host_with_a_port_or_scheme(given):
    """`--allow-host box:8765` (as the address bar shows it) was kept whole: no Host ever matched, and every request
    got a 403 telling to pass `--allow-host box`."""
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from polymodal.serve.middleware import ApiKeyMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    c = TestClient(ApiKeyMiddleware(app, None, allowed_hosts=(given,)))  # no `with`: the app has no lifespan
    assert c.get("/", headers={"host": "box:8765"}).status_code == 200
    assert c.get("/", headers={"host": "evil.example:8765"}).status_code == 403


def test_eval_of_karpathys_coco_file_suggests_a_held_out_split(tmp_path, caplog):
    """Karpathy's dataset_coco.json: train, restval (trained on too), val, test. The eval warning suggested
    `--split restval` (it holds "val"), the second-largest training split."""
    names = _photos(tmp_path / "imgs", 7)
    splits = ["train"] * 3 + ["restval"] * 2 + ["val", "test"]
    document = {"images": [{"filepath": "imgs", "filename": n, "split": s, "sentences": [{"raw": f"photo {i}"}]}
                           for i, (n, s) in enumerate(zip(names, splits))]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING), counting_skipped():
        read_pair_source(tmp_path / "dataset_coco.json")
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "--split val" in message and "restval`" not in message
