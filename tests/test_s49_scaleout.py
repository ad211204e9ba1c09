"""torchrun (s49): processes that read different training data (torchrun --nnodes with another copy of the data on
one machine) stop at once with one clear line each. Other row counts made gloo abort a process in the feature
caches' sum ("Received data size doesn't match expected size", exit -6); the same count with other captions trained
on a mix of the processes' data without a word."""

import json

import pytest
from PIL import Image

from test_s43_dist import _run_ranks  # noqa: E402 (tests/ is on the path)

# Started once per rank through polymodal's CLI; rank r reads pairs{r}.jsonl.
SCRIPT = '''
import os
import sys

from polymodal import cli

folder = sys.argv[1]
sys.exit(cli.main(["train", "contrastive", "--pairs", f"{folder}/pairs{os.environ['RANK']}.jsonl", "--out",
                   f"{folder}/run", "--epochs", "1", "--batch-size", "2", "--embed-dim", "8", "--val-fraction", "0",
                   "--quiet"]))
'''


def _pairs(path, photos, captions) -> None:
    path.write_text("".join(json.dumps({"image": str(p), "caption": c}) + "\n" for p, c in zip(photos, captions)))


@pytest.mark.parametrize("rank1", ["fewer", "edited"])
def test_processes_that_read_other_data_stop_with_one_line(tmp_path, monkeypatch, rank1):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))  # a cache of its own (the ranks write there)
    photos = []
    for i in range(4):
        photos.append(tmp_path / f"p{i}.jpg")
        Image.new("RGB", (32, 32), (60 * i, 255 - 60 * i, 30)).save(photos[-1])
    captions = ["a red square", "a green square", "a blue square", "a grey square"]
    _pairs(tmp_path / "pairs0.jsonl", photos, captions)
    if rank1 == "fewer":
        _pairs(tmp_path / "pairs1.jsonl", photos[:3], captions[:3])
        differ = "([4, 3] rows by rank)"
    else:
        _pairs(tmp_path / "pairs1.jsonl", photos, captions[:3] + ["a black square"])
        differ = "(4 rows each, with other contents)"
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    ranks = _run_ranks(script, tmp_path)
    for rc, _, err in ranks:
        assert rc == 2, err
        assert "Traceback" not in err, err
    said = [[line for line in err.splitlines() if line.startswith("polymodal:")] for _, _, err in ranks]
    assert said == [[  # rank 0 says it; every rank stops (s55: each said it, the same line once per process)
        f"polymodal: error: the processes read different --pairs data {differ}; every process must read the same "
        "files (torchrun --nnodes: the same data on every machine, e.g. on storage they share)"], []], ranks
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize("command", ["index", "eval"])
def test_commands_that_do_not_split_their_work_refuse_torchrun(command, tmp_path, monkeypatch, capsys):
    """Without the refusal `torchrun -m polymodal index` failed on the other process's index lock (and "terminated:
    0 of N images saved"), and `eval` printed its figures once per process."""
    from polymodal.cli import main

    Image.new("RGB", (32, 32), (200, 40, 30)).save(tmp_path / "p.jpg")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": str(tmp_path / "p.jpg"), "caption": "red"}) + "\n")
    argv = {"index": ["index", str(tmp_path), "--db", str(tmp_path / "pics.idx")],
            "eval": ["eval", "retrieval", "--pairs", str(tmp_path / "pairs.jsonl"), "--model", "lite"]}[command]
    monkeypatch.setenv("WORLD_SIZE", "2")  # a cluster job's container alone (no LOCAL_RANK): not torchrun
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert main(["info"]) == 0
    monkeypatch.setenv("LOCAL_RANK", "0")  # (the machine's first process says it: test_s55_scaleout)
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"polymodal: error: `polymodal {command}` runs in one process and does not split its "
                                 "work under torchrun (each of the 2 processes would do all of it); start it as "
                                 f"`polymodal {command} ...`. `train contrastive` is the command that trains across "
                                 "torchrun processes\n")
    assert not (tmp_path / "pics.idx").exists()
