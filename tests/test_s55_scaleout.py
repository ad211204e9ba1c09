"""torchrun (s55): the processes build the feature caches together without any of them holding the whole array
(each held all of it in memory though it computed a share: a grid cache for 82,000 photos is ~10 GB), and a user
mistake is printed once, not once per process."""

import json

import pytest
from PIL import Image

from test_s43_dist import _run_ranks  # noqa: E402

# Run by every rank of test_distributed's shared launch: 48 photos whose cached features are 1 MB each (a stand-in
# tower), in batches of 4, and 48 captions of 256 KB each, in batches of 8; tracemalloc sees numpy's allocations.
# Rank 0 also computes both alone.
SCENARIO = '''
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from polymodal.encoders.efficientnet import LITE0_TRANSFORM
from polymodal.train import distributed
from polymodal.train.features import image_features, text_features

out = Path(sys.argv[1])
assert distributed.init_from_env("gloo")
distributed.SUM_CHUNK = 1 << 16  # the sum's own chunk: 256 KB in float32


class Model:
    transform = LITE0_TRANSFORM

    def __init__(self, name):
        self.image_cache_signature = self.text_cache_signature = name

    def image_cache_input(self, pixels):
        return pixels.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).expand(-1, 128, 64, 64) + torch.arange(64.0)

    def text_tower(self, texts):
        return torch.tensor([[float(len(t))] for t in texts]) * torch.arange(65536.0)


photos = sorted(str(p) for p in (out / "photos").iterdir())
captions = [f"caption {'a' * i}" for i in range(48)]
tracemalloc.start()
img = image_features(Model("split"), photos, batch_size=4, progress=False, split_across_ranks=True)
image_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.reset_peak()
txt = text_features(Model("split"), captions, batch_size=8, progress=False, split_across_ranks=True)
text_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
rank = distributed.rank()
same = True
if rank == 0:
    same = (np.array_equal(np.asarray(img), image_features(Model("one"), photos, batch_size=4, progress=False))
            and np.array_equal(np.asarray(txt), text_features(Model("one"), captions, batch_size=8, progress=False)))
(out / f"rank{rank}.json").write_text(json.dumps({"image": [img.nbytes, image_peak], "text": [txt.nbytes, text_peak],
                                                   "same": bool(same), "distinct": len(np.unique(img[0, :, 0, 0, 0]))}))
'''


def write_inputs(folder):
    (folder / "photos").mkdir()
    for i in range(48):
        Image.new("RGB", (16, 16), (5 * i, 90, 40)).save(folder / "photos" / f"p{i:02d}.png")


def test_ranks_build_the_caches_without_holding_them_whole(launched):
    for rank in range(2):
        got = json.loads((launched["test_s55_scaleout"] / f"rank{rank}.json").read_text())
        assert got["same"] and got["distinct"] == 48, got  # every row, as one process computes them
        for kind in ("image", "text"):
            size, peak = got[kind]
            # a batch and a chunk of the sum at a time (~0.2 of it): each held the whole array (48 MB, 12 MB) and more
            assert peak < size / 2, (kind, rank, got)


def _pairs(tmp_path, n: int = 4):
    for i in range(n):
        Image.new("RGB", (32, 32), (60 * i, 90, 30)).save(tmp_path / f"p{i}.jpg")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": str(tmp_path / f"p{i}.jpg"),
                                                              "caption": f"photo {i}"}) + "\n" for i in range(n)))


TRAIN_SCRIPT = '''
import sys

from polymodal import cli

folder = sys.argv[1]
sys.exit(cli.main(["train", "contrastive", "--pairs", f"{folder}/pairs.jsonl", "--out", f"{folder}/run",
                   "--epochs", "1", "--batch-size", "2", "--embed-dim", "8", "--val-fraction", "0", "--quiet"]
                  + sys.argv[2:]))
'''


@pytest.mark.parametrize("mistake", ["--pairs", "--zeroshot-labels"])
def test_a_mistake_every_process_makes_is_printed_once(tmp_path, monkeypatch, mistake):
    """A missing --pairs file (read by each process) and a missing labels file (read after the model is made)."""
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    _pairs(tmp_path)
    script = tmp_path / "ranks.py"
    script.write_text(TRAIN_SCRIPT)
    ranks = _run_ranks(script, tmp_path, mistake, tmp_path / "missing.jsonl")
    said = [[line for line in err.splitlines() if line.startswith("polymodal:")] for _, _, err in ranks]
    assert [rc for rc, _, _ in ranks] == [2, 2], ranks
    assert len(said[0]) == 1 and said[1] == [], said  # rank 0 says it; every process stops
    assert "missing.jsonl" in said[0][0] and "Traceback" not in ranks[1][2], ranks
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--bogus"], ["--epochs", "x"]])
def test_a_mistake_found_before_the_processes_meet_is_said_by_the_first_on_the_machine(argv, tmp_path, monkeypatch,
                                                                                       capsys):
    """Before the group exists each process of a machine reads the same command line: LOCAL_RANK 0 says it."""
    from polymodal.cli import main

    _pairs(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["train", "contrastive", "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "run"), *argv]
    said = {}
    for local_rank in ("0", "1"):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own mistakes
            code = exc.code
        said[local_rank] = (code, capsys.readouterr().err)
    assert said["0"][0] == said["1"][0] == 2
    assert said["0"][1].count("error:") == 1 and said["1"][1] == "", said
    assert not (tmp_path / "run").exists()
