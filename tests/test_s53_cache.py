"""The feature cache (s53): `polymodal cache info` / `cache clear [--older-than DAYS]` (it was never pruned: a day
of trainings and tests filled 685 MB), safe beside a run that reads or writes the cache; trained_with.json records
torch's version and thread count (they move trained weights at the 1e-3 level through the float16 cache)."""

import json
import logging
import os
import re
import time

import numpy as np
import pytest

from polymodal import cli
from polymodal.cache import cache_dir, load_cached, store_cached

DAY = 86400


def _entry(kind: str, key: str, rows: int, days_ago: float) -> os.PathLike:
    path = cache_dir() / "features" / f"{kind}-{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.full((rows, 4), 7, np.float16))
    then = time.time() - days_ago * DAY
    os.utime(path, (then, then))
    return path


def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cache_info_sizes_and_clear_prunes_by_last_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    old = _entry("image", "a" * 20, 100, days_ago=40)
    recent = _entry("text-bank", "b" * 20, 10, days_ago=2)
    features = cache_dir() / "features"
    live_tmp, dead_tmp = features / ".image-c.npy.1.tmp", features / ".image-d.npy.2.tmp"
    for tmp, age_s in ((live_tmp, 10), (dead_tmp, 7200)):
        tmp.write_bytes(b"\0" * 50)
        os.utime(tmp, (time.time() - age_s,) * 2)
    export = cache_dir() / "onnx" / "lite"
    export.mkdir(parents=True)
    (export / "model.onnx").write_bytes(b"\0" * 30)

    code, out = _cli(capsys, "cache", "info", "--json")
    info = json.loads(out)
    assert code == 0 and info["files"] == 2 and info["bytes"] == old.stat().st_size + recent.stat().st_size
    assert info["kinds"]["image"]["files"] == 1 and info["kinds"]["text-bank"]["files"] == 1
    assert info["unfinished_writes_bytes"] == 100 and info["onnx_exports"] == {"lite": 30}
    code, out = _cli(capsys, "cache", "info")
    assert code == 0 and re.search(r"^feature cache: .* in 2 files", out, re.M) and "cache clear" in out

    code, out = _cli(capsys, "cache", "clear", "--older-than", "30")
    assert code == 0 and out.startswith("deleted 2 files") and "kept 1 used within the last 30 days" in out
    assert not old.exists() and recent.exists()
    assert live_tmp.exists() and not dead_tmp.exists()  # a write in progress is left to finish
    code, out = _cli(capsys, "cache", "clear")
    assert code == 0 and not recent.exists() and (export / "model.onnx").exists()  # exports are not recomputed
    assert json.loads(_cli(capsys, "cache", "info", "--json")[1])["files"] == 0


@pytest.mark.parametrize("days", ["-1", "nan", "inf"])
def test_clear_refuses_a_bad_age_in_one_line(tmp_path, monkeypatch, capsys, days):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    kept = _entry("image", "a" * 20, 3, days_ago=400)
    code, out = _cli(capsys, "cache", "clear", f"--older-than={days}")
    assert code != 0 and "--older-than must be a number of days" in out and "Traceback" not in out
    assert kept.exists()


def test_a_served_entry_counts_as_used_and_a_reader_keeps_it_through_a_clear(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    path = _entry("image", "e" * 20, 5, days_ago=90)  # filled long ago, used by today's run:
    _, mapped = load_cached("e" * 20, "image")
    assert mapped is not None and time.time() - path.stat().st_mtime < 60
    assert _cli(capsys, "cache", "clear", "--older-than", "30")[0] == 0 and path.exists()  # not pruned as unused
    assert _cli(capsys, "cache", "clear")[0] == 0 and not path.exists()
    assert float(mapped.sum()) == 7 * 20  # a run holding it memory-mapped still reads it (POSIX)
    with caplog.at_level(logging.WARNING):
        assert load_cached("e" * 20, "image")[1] is None  # gone: computed again, no "unreadable" warning
    assert "unreadable" not in caplog.text


def test_a_clear_between_a_write_and_its_mapping_does_not_fail_the_run(tmp_path, monkeypatch):
    """store_cached maps the file it just wrote: a `cache clear` in another shell at that moment raised
    FileNotFoundError out of the training (or search --texts) that had just computed the features."""
    import polymodal.cache as cache

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    write = cache.write_cache_bytes

    def write_then_cleared(path, data):
        done = write(path, data)
        path.unlink()  # what a concurrent `polymodal cache clear` does
        return done

    monkeypatch.setattr(cache, "write_cache_bytes", write_then_cleared)
    path, _ = load_cached("f" * 20, "text")
    features = np.arange(12, dtype=np.float16).reshape(3, 4)
    np.testing.assert_array_equal(store_cached(path, features), features)


def test_trained_with_records_torch_and_threads_and_older_records_still_show(tmp_path, monkeypatch, capsys):
    import torch

    from polymodal.trained_with import FILE_NAME, trained_with, write_trained_with

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"type": "dual_encoder", "name": "mine", "version": "abc"}))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    write_trained_with(folder, trained_with({"train": {"seed": 1}}))
    env = json.loads((folder / FILE_NAME).read_text())["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == 3 and env["numpy"] == np.__version__
    assert env["python"] and "transformers" in env
    code, out = _cli(capsys, "info", "--model", str(folder))
    assert code == 0 and re.search(rf"^environment +torch {re.escape(torch.__version__)} at 3 threads, numpy ", out,
                                   re.M)

    record = json.loads((folder / FILE_NAME).read_text())
    del record["environment"]  # a trained_with.json written before this change
    (folder / FILE_NAME).write_text(json.dumps(record))
    code, out = _cli(capsys, "info", "--model", str(folder))
    assert code == 0 and re.search(r"^environment +not recorded", out, re.M) and re.search(r"^seed +1$", out, re.M)
    code, out = _cli(capsys, "info", "--model", str(folder), "--json")
    assert code == 0 and json.loads(out)["model"]["trained_with"]["settings"]["train"]["seed"] == 1
