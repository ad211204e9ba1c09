"""Stop 43, registry and benchmarks review: model folders polymodal cannot load are said for what they are (a newer
polymodal's type, a damaged config.json, one file of a folder) instead of as a CLIP checkpoint; a near miss of a
built-in name is suggested; benchmarks given a wrong --model, --image or --db say so in one line, and serve_load's
dead server names its error instead of a log that is deleted with its temporary folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import polymodal
from polymodal.errors import PolymodalError
from polymodal.resources import HERE

from conftest import benchmark_module


def _copy_default(tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(HERE / "models" / "default", folder)
    return folder


def test_a_model_type_this_polymodal_does_not_know_suggests_a_newer_polymodal(tmp_path):
    folder = _copy_default(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "type": "speech_encoder"}))
    with pytest.raises(PolymodalError, match=r"type 'speech_encoder', which this polymodal .*saved by a newer"):
        polymodal.load(folder)


@pytest.mark.parametrize("text", ['{"type": "dual_enc', "[1, 2]", '{"name": "default"}'])
def test_a_damaged_config_json_beside_polymodal_weights_is_called_damaged(text, tmp_path):
    folder = _copy_default(tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(PolymodalError, match="holds a polymodal model's weights but its config.json is damaged"):
        polymodal.load(folder)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_file_of_a_model_folder_names_the_folder_to_pass(name, tmp_path):
    folder = _copy_default(tmp_path)
    with pytest.raises(PolymodalError, match=f"is one file of the model folder {folder}; pass that folder"):
        polymodal.load(folder / name)


@pytest.mark.parametrize("typo, meant", [("easy_vqa", "easy-vqa"), ("Lite", "lite"), ("defualt", "default")])
def test_a_near_miss_of_a_built_in_name_is_suggested(typo, meant, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolymodalError, match=f"unknown model '{typo}' \\(did you mean '{meant}'\\?\\)"):
        polymodal.load(typo)


def test_a_missing_path_gets_no_suggestion(tmp_path):
    with pytest.raises(PolymodalError) as info:
        polymodal.load(tmp_path / "default.pt")
    assert "did you mean" not in str(info.value)


def _bench(name: str):
    return benchmark_module(name, "s43")


@pytest.mark.parametrize("name, argv, said", [
    ("embed_throughput", ["--model", "nosuch", "--runtime", "torch"], "unknown model 'nosuch'"),
    ("embed_throughput", ["--model", "easy-vqa", "--runtime", "torch"], "cannot embed images"),
    ("vqa_choices", ["--model", "nosuch", "--rows", "2"], "unknown model 'nosuch'"),
    ("jpeg_draft", ["--model", "nosuch", "--pairs", "{pairs}", "--size", "64x48"], "unknown model 'nosuch'"),
])
def test_a_benchmark_given_a_wrong_model_says_so_in_one_line(name, argv, said, tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.jpg", "caption": "a cat"}\n')
    assert _bench(name).main([a.format(pairs=pairs) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--image", "--db"])
def test_serve_load_refuses_a_missing_input_before_starting_a_server(flag, tmp_path, capsys):
    # one line and exit 2 since s46 (was SystemExit with the message: exit 1)
    assert _bench("serve_load").main([flag, str(tmp_path / "nothing"), "--runtime", "torch"]) == 2
    assert capsys.readouterr().err == f"error: no {flag} at {tmp_path / 'nothing'}\n"


def test_serve_load_names_the_error_of_a_server_that_exited(tmp_path):
    module = _bench("serve_load")
    server = module.Server.__new__(module.Server)
    with open(tmp_path / "server.log", "ab") as log:
        server.log = Path(log.name)
        server.proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('started\\n"
                                        "polymodal: error: no index at /x\\n'); sys.exit(2)"], stdout=log, stderr=log)
        server.proc.wait(30)
        with pytest.raises(SystemExit, match="server exited with code 2: polymodal: error: no index at /x$"):
            server.wait_ready(30)


def test_tensorboard_tags_name_each_value_once(tmp_path):
    """An epoch's record ({"split": "val", "val/rsum", "train_loss"}) was logged as val/val/rsum and val/train_loss."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from polymodal.train.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path / "run")
    logger.write({"step": 1, "epoch": 1, "split": "train", "loss": 2.0, "lr": 0.1})
    logger.write({"step": 1, "epoch": 1, "split": "val", "train_loss": 1.5, "val/rsum": 3.0})
    logger.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["epoch/train_loss", "train/loss", "train/lr", "val/rsum"]
    assert events.Scalars("val/rsum")[0].value == 3.0


@pytest.mark.parametrize("name, flag", [("embed_throughput", "--batches"), ("fused_tower", "--batches"),
                                        ("serve_load", "--concurrency")])
def test_a_benchmark_count_list_that_is_not_numbers_is_one_line(name, flag, capsys):
    with pytest.raises(SystemExit) as info:
        _bench(name).main([flag, "a"])
    assert info.value.code == 2
    assert "expected whole numbers joined by commas" in capsys.readouterr().err
