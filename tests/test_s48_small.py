"""Small mendings of stop 48, each from an earlier stop's list of what was left alone."""

import json

from polymodal.cli import main
from test_s42_captrain import _pairs


def test_a_captioner_resume_names_its_config_only_settings_as_config_keys(tmp_path, capsys):
    """`train captioner` has no --dropout (`train vqa` has): a resume that changed it names the --config key."""
    run = str(tmp_path / "run")
    (tmp_path / "a.json").write_text(json.dumps({"arch": {"dropout": 0.1}}))
    (tmp_path / "b.json").write_text(json.dumps({"arch": {"dropout": 0.3}}))
    assert main(["train", "captioner", "--pairs", _pairs(tmp_path), "--out", run, "--epochs", "1", "--batch-size", "4",
                 "--config", str(tmp_path / "a.json"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "captioner", "--out", run, "--resume", "--epochs", "2", "--config", str(tmp_path / "b.json"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert '"dropout": 0.1 (a --config key; asked now: 0.3)' in err, err
    assert "--dropout" not in err, err
