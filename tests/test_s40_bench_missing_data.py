"""A benchmark whose data is missing says so in one line and exits 2, never with a traceback: captioning.py without
../shared/data, contrastive_cv.py and int8_batch_dependence.py with a --pairs (or --config) that is not there."""

import pytest
from PIL import Image

from conftest import benchmark_module


def _main(name: str):
    return benchmark_module(name, "s40")


def test_captioning_without_the_shared_data(tmp_path, capsys, monkeypatch):
    module = _main("captioning")
    monkeypatch.setattr(module, "SHARED_DATA", tmp_path / "shared" / "data")
    assert module.main(["--epochs", "1"]) == 2
    assert "needs " + str(tmp_path / "shared" / "data" / "flickr8k-dev" / "pairs.jsonl") in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--pairs", "{missing}"], ["--pairs", "{pairs}", "--extra-pairs", "{missing}"],
                                  ["--pairs", "{pairs}", "--config", "{missing}"]])
def test_contrastive_cv_with_a_missing_file(argv, tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.jpg", "caption": "a cat"}\n')
    argv = [a.format(missing=tmp_path / "nothing.jsonl", pairs=pairs) for a in argv]
    assert _main("contrastive_cv").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nothing.jsonl" in err and "Traceback" not in err


def test_int8_batch_dependence_with_a_missing_pairs_file(tmp_path, capsys):
    assert _main("int8_batch_dependence").main(["--pairs", str(tmp_path / "nothing.jsonl")]) == 2
    assert f"no pairs file at {tmp_path / 'nothing.jsonl'}" in capsys.readouterr().err
