"""What a helper found fine-tuning, indexing, exporting and serving its own captioned photos (stop 34), kept fixed."""

import json
from pathlib import Path

import pytest

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.train.metrics import read_metrics
from tests.conftest import cli_json

PHOTOS = {name: desc for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items()}
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "default.json"


@pytest.fixture(scope="module")
def pairs(gallery):
    path = gallery / "s34.jsonl"
    path.write_text("".join(json.dumps({"image": f"{n}.jpg", "caption": d}) + "\n" for n, d in PHOTOS.items()))
    return path


def test_the_recipe_scores_lite_as_epoch_0(pairs, tmp_path):
    """recipes/default.json's heads start as the identity over lite's space, so the run scores lite before training
    and RUN/model stays lite's embedding unless an epoch beats it. On 340 photos its first epoch halved lite's
    image->text R@5, and nothing in the run showed lite's figures."""
    run = tmp_path / "recipe"
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-pairs", str(pairs), "--out", str(run),
                     "--config", str(RECIPE), "--epochs", "1", "--views", "1", "--quiet"]) == 0
    start = next(r for r in read_metrics(run) if r["split"] == "val" and r["epoch"] == 0)
    lite = cli_json(["eval", "retrieval", "--pairs", str(pairs), "--model", "lite"])
    for key in ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5"):
        assert start[f"val/{key}"] == pytest.approx(lite[key], abs=1e-3), key
    plain = tmp_path / "plain"  # new linear heads are random: nothing to keep, no epoch 0
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-pairs", str(pairs), "--out", str(plain),
                     "--epochs", "1", "--embed-dim", "16", "--quiet"]) == 0
    assert [r["epoch"] for r in read_metrics(plain) if r["split"] == "val"] == [1]


def test_index_resyncs_with_the_model_the_index_records(pairs, gallery, tmp_path):
    """`polymodal index FOLDER --db DB` (the README's re-sync) refused an index built with --model: it fell back to
    lite, while search and serve use the index's model."""
    run = tmp_path / "run"
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--out", str(run), "--epochs", "1",
                     "--embed-dim", "16", "--val-fraction", "0", "--quiet"]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat", "coffee"):
        (photos / f"{name}.jpg").write_bytes((gallery / f"{name}.jpg").read_bytes())
    db = str(tmp_path / "db")
    assert cli_json(["index", str(photos), "--db", db, "--model", str(run / "model"), "--json"])["added"] == 2
    (photos / "rocket.jpg").write_bytes((gallery / "rocket.jpg").read_bytes())
    out = cli_json(["index", str(photos), "--db", db, "--json"])
    assert (out["added"], out["unchanged"]) == (1, 2) and out["index"]["model_name"] == str((run / "model").resolve())
    fresh = cli_json(["index", str(photos), "--db", str(tmp_path / "db2"), "--json"])  # a new index: lite
    assert fresh["index"]["model_name"] == "lite"
    (run / "model").rename(run / "moved")
    assert cli.main(["index", str(photos), "--db", db]) == 2  # the recorded model folder moved: one line, as search
