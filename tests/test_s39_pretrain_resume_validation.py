"""--resume of a validated pretraining run with settings that redefine its validation (the objective weights that
make val/score, the MLM/MRM mask rates, hard_k) is refused, as another --seed is: the new epochs' val/score would be
compared with a best one measured under another definition."""

import json
import shutil

import pytest

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS

NAMES = sorted({**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS})


@pytest.fixture(scope="module")
def one_epoch(gallery, tmp_path_factory):
    pairs = gallery / "s39-pairs.jsonl"
    with pairs.open("w") as f:
        for name in NAMES:
            for t in ("a photo of a {}", "the {} is shown here"):
                f.write(json.dumps({"image": f"{name}.jpg", "caption": t.format(name)}) + "\n")
    out = tmp_path_factory.mktemp("s39") / "run"
    args = ["train", "pretrain", "--pairs", str(pairs), "--val-pairs", str(pairs), "--objectives", "itm:1,mlm:1,mrm:0.5",
            "--dim", "32", "--batch-size", "16", "--hard-k", "2", "--quiet"]
    assert cli.main(args + ["--out", str(out), "--epochs", "1"]) == 0
    return out, args


@pytest.mark.parametrize("changed, flag", [(["--objectives", "itm:1,mlm:0.01,mrm:0.5"], "--objectives"),
                                           (["--mlm-rate", "0.6"], "--mlm-rate"), (["--hard-k", "1"], "--hard-k")])
def test_resume_refuses_settings_that_redefine_validation(one_epoch, tmp_path, capsys, changed, flag):
    out, args = one_epoch
    run = tmp_path / "run"
    shutil.copytree(out, run)
    capsys.readouterr()
    assert cli.main(args + ["--out", str(run), "--epochs", "2", "--resume", *changed]) == 2
    assert f"trained with {flag}" in capsys.readouterr().err
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in rows) == 1  # nothing trained


def test_resume_with_the_same_settings_still_runs(one_epoch, tmp_path):
    out, args = one_epoch
    run = tmp_path / "run"
    shutil.copytree(out, run)
    assert cli.main(["train", "pretrain", "--out", str(run), "--epochs", "2", "--resume", "--quiet"]) == 0


def test_resume_with_random_negatives_takes_another_hard_k(gallery, tmp_path):
    """hard_k mines nothing with --negatives random: another value changes no validation negative, so it is no
    reason to refuse the resume."""
    pairs = gallery / "s39-random-pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": f"{n}.jpg", "caption": f"a photo of a {n}"}) + "\n" for n in NAMES))
    args = ["train", "pretrain", "--pairs", str(pairs), "--val-pairs", str(pairs), "--objectives", "itm", "--dim", "32",
            "--batch-size", "16", "--negatives", "random", "--out", str(tmp_path / "run"), "--quiet"]
    assert cli.main(args + ["--epochs", "1"]) == 0
    assert cli.main(args + ["--epochs", "2", "--resume", "--hard-k", "3"]) == 0
