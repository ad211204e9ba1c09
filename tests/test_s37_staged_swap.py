"""staged_folder on Linux swaps the old and new folders in one step (renameat2 RENAME_EXCHANGE): a kill at any
moment leaves either the old folder or the new one at its name, never none."""

import os
import sys

import pytest

import polymodal.cache
from polymodal.cache import staged_folder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")


def test_the_old_folder_is_never_moved_away_from_its_name(tmp_path, monkeypatch):
    out = tmp_path / "run" / "model"
    out.mkdir(parents=True)
    (out / "weights.bin").write_text("old")
    real = os.replace

    def no_gap(src, dst):
        if os.fspath(src) == os.fspath(out):
            pytest.fail("the old folder was renamed aside: a kill now would leave no folder at its name")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", no_gap)
    with staged_folder(out) as stage:
        (stage / "weights.bin").write_text("new")
        (stage / "config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.bin"]
    assert (out / "weights.bin").read_text() == "new"
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # the old folder, swapped to the stage, is gone


def test_without_renameat2_it_renames_twice_with_the_same_result(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    monkeypatch.setattr(polymodal.cache, "_exchange", lambda a, b: False)
    with staged_folder(out) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failing_swap_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def refused(a, b):
        raise PermissionError(13, "Permission denied", str(b))

    monkeypatch.setattr(polymodal.cache, "_exchange", refused)
    with pytest.raises(PermissionError):
        with staged_folder(out) as stage:
            (stage / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["model"]
