"""`--resume` after an `--overwrite` that was killed (SIGKILL, out of memory) before its first epoch: the run it was
replacing still sits in RUN/.replaced-run, which the error said nothing of ("no checkpoint ... train without
--resume first"), so a user could take the earlier run for lost."""

import json

from polymodal import cli
from polymodal.train.guards import REPLACED_RUN, prepare_run_folder


def test_resume_after_a_killed_overwrite_names_the_kept_run(gallery, tmp_path, capsys):
    from polymodal.data.samples import SKIMAGE_PHOTOS

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "caption": desc}) + "\n"
                             for name, (_, desc) in SKIMAGE_PHOTOS.items()))
    out = tmp_path / "run"
    train = ["train", "contrastive", "--pairs", str(pairs), "--out", str(out), "--quiet", "--embed-dim", "16",
             "--epochs", "1", "--batch-size", "4"]
    assert cli.main(train) == 0
    config = (out / "train_config.json").read_text()
    prepare_run_folder(out, overwrite=True)  # what --overwrite does first; SIGKILL then, before its epoch 1
    (out / "train_config.json").write_text(config)  # the new run had written its settings
    capsys.readouterr()
    assert cli.main([*train, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"the run it was replacing is kept in {out / REPLACED_RUN}" in err and "--overwrite" in err
    assert (out / REPLACED_RUN / "checkpoint.pt").is_file()  # nothing moved or deleted
