"""A new user fine-tuning on their own photos: corrupt files in the data, Ctrl-C and --resume, searching an index
built with the fine-tuned model. Tiny runs over the sample gallery (features cached once per test session)."""

import json
import logging

import pytest

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.errors import PolymodalError
from polymodal.train.contrastive import ContrastiveRecipe, train_contrastive
from polymodal.train.metrics import read_metrics
from tests.conftest import cli_json

PHOTOS = {name: desc for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items()}


@pytest.fixture(scope="module")
def pairs(gallery):
    path = gallery / "walk.jsonl"
    path.write_text("".join(json.dumps({"image": f"{n}.jpg", "caption": d}) + "\n" for n, d in PHOTOS.items()))
    return path


def _argv(pairs, out, *extra):
    return ["train", "contrastive", "--pairs", pairs, "--out", out, "--quiet", "--batch-size", "8", "--embed-dim",
            "16", "--warmup-steps", "1", "--patience", "0", *extra]


def _run(argv) -> int:
    return cli.main([str(a) for a in argv])


def test_unreadable_images_are_left_out_not_fatal(gallery, tmp_path, caplog):
    """README: 'Unreadable rows are counted and reported, not fatal'. A truncated JPEG and a file that is no image
    at all used to end `train contrastive` (train and val images alike)."""
    whole = (gallery / "cat.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg")
    rows = [{"image": str(gallery / f"{n}.jpg"), "caption": d} for n, d in PHOTOS.items()]
    rows += [{"image": "truncated.jpg", "caption": "half a cat"}, {"image": "garbage.jpg", "caption": "not a photo"}]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        assert _run(_argv(data, tmp_path / "run", "--val-pairs", data, "--epochs", "1")) == 0
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["train_images"] == config["val_images"] == len(PHOTOS)
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert "left out 2 unreadable images" in caplog.text and "truncated.jpg" in caplog.text


def test_no_readable_image_is_one_error(gallery, tmp_path):
    from polymodal.train.features import image_features
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(PolymodalError, match="none of the 1 image could be read"):
        image_features(DualEncoder(DualEncoderConfig(embed_dim=16)), [tmp_path / "bad.jpg"], progress=False,
                       skip_unreadable=True)


@pytest.fixture(scope="module")
def run(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("walk") / "run"
    assert _run(_argv(pairs, out, "--epochs", "1", "--head-dropout", "0.2")) == 0
    return out


def test_resume_alone_continues_the_run_with_its_settings(run, tmp_path, capsys):
    """After Ctrl-C, `--out RUN --resume` (plus --epochs to go further) used to demand --pairs again, and resuming
    without the original architecture flags ended in a ValueError traceback from the optimizer."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    capsys.readouterr()
    assert _run(["train", "contrastive", "--out", out, "--resume", "--epochs", "2", "--quiet"]) == 0
    assert [r["epoch"] for r in read_metrics(out) if r["split"] == "val"] == [1, 2]
    config = json.loads((out / "train_config.json").read_text())
    assert config["arch"]["embed_dim"] == 16 and config["arch"]["head_dropout"] == 0.2 and config["batch_size"] == 8


def test_resume_with_another_architecture_is_one_line_and_writes_nothing(run, pairs, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    capsys.readouterr()
    assert _run(_argv(pairs, run, "--resume", "--epochs", "2", "--embed-dim", "32")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "--embed-dim 16 (asked now: 32)" in err and "train_config.json" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_checkpoint_of_another_architecture_is_a_polymodal_error(run, pairs, tmp_path):
    """A run without train_config.json (or a Python recipe): the checkpoint load itself says what is wrong."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "train_config.json").unlink()
    recipe = ContrastiveRecipe(pairs=[str(pairs)], out=str(out), val_fraction=0.0, batch_size=8,
                               arch={"embed_dim": 32}, train={"epochs": 2})
    with pytest.raises(PolymodalError, match="does not fit this model"):
        train_contrastive(recipe, resume=True, progress=False)


def test_index_built_with_a_trained_model_searches_without_model(run, gallery, tmp_path, capsys):
    """The index recorded the model's name ('dual-encoder'), which `search --db` could not load; it now records the
    folder the model came from."""
    db = tmp_path / "mine.idx"
    report = cli_json(["index", gallery, "--db", db, "--model", run / "model", "--json"])
    assert report["index"]["model_name"] == str((run / "model").resolve())
    hits = cli_json(["search", "--db", db, "a tabby cat", "-k", "3", "--json"])
    assert len(hits) == 3


def test_repeated_rows_count_once_and_are_reported(gallery, tmp_path):
    from polymodal.data.pairs import read_pair_source

    rows = [{"image": str(gallery / "cat.jpg"), "caption": "a cat"}] * 3 + [
        {"image": str(gallery / "cat.jpg"), "caption": "a  cat "},  # the same caption once spaces are tidied
        {"image": str(gallery / "cat.jpg"), "caption": "a tabby cat"}]
    data = tmp_path / "rep.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_pair_source(data)
    assert got.captions == ["a cat", "a tabby cat"]
    assert len(got.skipped) == 3 and all("repeats the caption 'a cat'" in why for _, why in got.skipped)


def test_a_warmup_longer_than_the_run_is_named(pairs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        # the last --warmup-steps wins over _argv's
        assert _run(_argv(pairs, tmp_path / "run", "--epochs", "1", "--val-fraction", "0", "--warmup-steps", "50")) == 0
    assert "warmup_steps=50 is not shorter than the whole run (1 steps)" in caplog.text
    assert "--warmup-steps 0" in caplog.text  # 1 would warn again in a 1-step run


def test_resume_works_from_another_folder(pairs, tmp_path, monkeypatch, capsys):
    """train_config.json used to keep data paths as typed, so resuming from elsewhere could not find the pairs."""
    import shutil

    shutil.copy(pairs, tmp_path / "mine.jsonl")
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    (tmp_path / "mine.jsonl").write_text("".join(
        json.dumps({**r, "image": str(pairs.parent / r["image"])}) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    assert _run(_argv("mine.jsonl", "run", "--epochs", "1", "--val-fraction", "0")) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert _run(["train", "contrastive", "--out", tmp_path / "run", "--resume", "--epochs", "2", "--quiet"]) == 0
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["pairs"] == [str(tmp_path / "mine.jsonl")]


def test_a_row_in_two_sources_counts_once(gallery, tmp_path):
    from polymodal.data.pairs import read_pair_sources

    row = json.dumps({"image": str(gallery / "cat.jpg"), "caption": "a cat"}) + "\n"
    (tmp_path / "a.jsonl").write_text(row)
    (tmp_path / "b.jsonl").write_text(row + json.dumps({"image": str(gallery / "cat.jpg"), "caption": "a pet"}) + "\n")
    got = read_pair_sources([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert got.captions == ["a cat", "a pet"] and len(got.skipped) == 1


def test_built_in_model_names_stay_names_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """`--out lite` created ./lite before the settings were written, and 'lite' became /abs/lite: --resume failed."""
    from polymodal.train.run_settings import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lite").mkdir()
    (tmp_path / "mine").mkdir()
    recipe = ContrastiveRecipe(pairs=["p.jsonl"], out="lite", model="lite")
    assert "model" not in absolute_paths(recipe, ("pairs",), ("model",))
    recipe.model = "mine"
    assert absolute_paths(recipe, ("pairs",), ("model",))["model"] == str(tmp_path / "mine")
