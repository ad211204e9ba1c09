"""Review of stop 45's changes (helper): each test fails without its fix."""

import json
import os

import numpy as np
import pytest

from polymodal import cli
from test_s45_scale import RandomVectors, _files  # noqa: E402 (tests/ is on the path)


def test_a_flagless_arch_key_at_the_top_of_a_config_is_checked_against_the_continued_model(tmp_path, capsys):
    # top-level architecture keys are read as "arch" since this stop; the check that a continued model keeps its
    # architecture looked only under "arch", so logit_scale_init 5 was accepted, ignored and recorded as used
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"logit_scale_init": 5.0}))
    assert cli.main(["train", "contrastive", "--model", "default", "--config", str(config),
                     "--pairs", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "run")]) == 2
    assert "keeps its own architecture (logit_scale_init 30), so logit_scale_init 5.0" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "--resume"], ["eval", "--ci"]])
def test_a_tasks_flag_without_the_task_says_the_task_is_missing(argv, capsys):
    # --resume is a flag of every train task: "unrecognized arguments: --resume" sent the user the wrong way
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "the following arguments are required: task" in err
    assert "unrecognized" not in err


def test_update_folders_counts_a_nested_folders_skip_once_and_takes_a_generator(tmp_path):
    from polymodal.index import ImageIndex

    photos = _files(tmp_path / "photos", 2)
    _files(photos / "sub", 1, start=5)
    os.symlink(tmp_path / "gone.jpg", photos / "sub" / "broken.jpg")
    report = ImageIndex(tmp_path / "db").update_folders([photos, photos / "sub"], RandomVectors(), progress=False)
    assert (report.added, len(report.skipped)) == (3, 1)  # the broken link was skipped (and counted) twice
    other = _files(tmp_path / "other", 2)
    report = ImageIndex(tmp_path / "db2").update_folders((f for f in (photos, other)), RandomVectors(), progress=False)
    assert report.added == 5  # a generator was used up by the type check: nothing synced, no error


def test_a_numpy_float32_answer_is_its_short_text():
    from polymodal.data.answers import answer_text, normalize_answer

    assert answer_text(np.float32(0.1)) == "0.1" and normalize_answer(np.float32(2.5)) == "2.5"  # not 0.10000000149
    assert answer_text(np.float32(2.0)) == "2" and answer_text(0.1) == "0.1"
