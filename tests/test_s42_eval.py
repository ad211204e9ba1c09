"""Review stop 42, evaluation: an unreadable photo inside tar shards is counted in eval retrieval's JSON line;
--out that is a device, a pipe or the command's own stdout is refused before any work (it was replaced by a plain
file, or failed after the whole run); zeroshot_accuracy refuses labels that do not pair with the images."""

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_json
from polymodal.errors import PolymodalError

ROOT = Path(__file__).resolve().parents[1]


def _shard(gallery: Path, out: Path, broken: str) -> Path:
    """One tar shard of the gallery's photos, each with a caption; the photo ``broken`` cut short."""
    photos = sorted(gallery.glob("*.jpg"))
    with tarfile.open(out, "w") as tar:
        for i, photo in enumerate(photos):
            data = photo.read_bytes()
            if photo.name == broken:
                data = data[: len(data) // 3]
            for name, body in ((f"{i:06d}.jpg", data), (f"{i:06d}.txt", f"a photo of a {photo.stem}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return out


def test_eval_retrieval_counts_an_unreadable_photo_inside_a_shard(gallery, tmp_path, lite, monkeypatch) -> None:
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)  # the session's model: no second load
    photos = sorted(gallery.glob("*.jpg"))
    shard = _shard(gallery, tmp_path / "shard-000000.tar", photos[1].name)
    out = cli_json(["eval", "retrieval", "--pairs", shard, "--model", "lite"])
    # as eval captions counts the same photo; it was 0, the photo only named in a warning
    assert out["unreadable"] == 1
    assert out["images"] == len(photos) - 1


def test_out_that_is_not_a_regular_file_is_refused(tmp_path) -> None:
    from polymodal.eval.per_item import check_out

    pipe = tmp_path / "items.fifo"
    os.mkfifo(pipe)
    for path in (pipe, os.devnull):  # only checked here: nothing is written to them
        with pytest.raises(PolymodalError, match="not a regular file"):
            check_out(str(path))
    check_out(str(tmp_path / "items.jsonl"))  # a new file is fine
    (tmp_path / "old.jsonl").write_text("{}\n")
    check_out(str(tmp_path / "old.jsonl"))  # and so is one to replace


def test_out_that_is_the_commands_own_stdout_is_refused(tmp_path) -> None:
    """`--out /dev/stdout > all.jsonl`: stdout is a regular file there, but renaming onto /dev/stdout would replace
    the link (as root) and the JSON line would land in a file no one can open."""
    code = "from polymodal.eval.per_item import check_out; check_out('/dev/stdout')"
    with open(tmp_path / "all.jsonl", "wb") as stdout:
        done = subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode != 0 and b"not a regular file" in done.stderr


def test_zeroshot_accuracy_needs_one_label_per_image(lite, gallery) -> None:
    from polymodal.eval.zeroshot import zeroshot_accuracy

    photos = sorted(gallery.glob("*.jpg"))[:2]
    with pytest.raises(PolymodalError, match="one label per image"):  # it scored 2 photos, the third label dropped
        zeroshot_accuracy(lite, photos, ["cat", "dog", "rocket"])
    with pytest.raises(PolymodalError, match="one label per image"):
        zeroshot_accuracy(lite, photos, ["cat"], image_emb=np.ones((2, 4)))
    with pytest.raises(PolymodalError, match="one string"):  # it was the classes "c", "a", "t": top1 1.0
        zeroshot_accuracy(lite, photos[0], "cat")


def test_punctuation_only_references_are_warned_of(caplog):
    """A reference of "..." tokenises to nothing: it was scored as an empty reference without a word."""
    pytest.importorskip("pycocoevalcap")
    from polymodal.eval.captions import caption_scores

    with caplog.at_level("WARNING"):
        caption_scores([["a dog runs on grass", "..."], ["a red bus"]], ["a dog runs", "a bus"])
    assert "1 reference caption has no words" in caplog.text and "'...'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        caption_scores([["a dog runs on grass"], ["a red bus"]], ["a dog runs", "a bus"])
    assert "no words" not in caplog.text


def test_eval_captions_refuses_negative_examples_before_the_model_loads(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pycocoevalcap")
    from polymodal import cli, cli_caption

    monkeypatch.setattr(cli_caption, "load_captioner_model", lambda *a: pytest.fail("the model loaded"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.jpg", "caption": "a cat"}\n')
    assert cli.main(["eval", "captions", "--pairs", str(pairs), "--examples", "-1"]) == 2
    assert "--examples must be at least 0, got -1" in capsys.readouterr().err
