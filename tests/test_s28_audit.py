"""Mutation audit of the training/deploy audit fixes (cf3f77d..47f6e17): each test pins behaviour that a small
mutation of the new code left every existing test passing. Seconds on a CPU; no network."""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import socket
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.train.guards import (
    REPLACED_RUN, discard_unfinished_run, prepare_run_folder, warn_of_shared_photos,
)
from polymodal.train.metrics import read_metrics
from polymodal.train.trainer import Trainer

from test_cli_encoders_audit import spy_load  # noqa: F401  (fixture)
from test_train_guards import pairs_file  # noqa: F401  (fixture)
from test_trainer_loop import _scripted, _trainer


def _val_epochs(out) -> list[int]:
    return [r["epoch"] for r in read_metrics(out) if r["split"] == "val"]


def _pngs(folder, n: int, size: int = 8) -> list[str]:
    """n small PNGs of distinct colours in folder -> their names."""
    names = []
    for i in range(n):
        name = f"c{i:03d}.png"
        Image.new("RGB", (size, size), (i * 37 % 256, i * 91 % 256, i * 53 % 256)).save(folder / name)
        names.append(name)
    return names


# -- train/trainer.py ------------------------------------------------------------------------------------------------


def test_a_resumed_fine_tuning_run_scores_no_second_epoch_0(tmp_path):
    """score_start applies to a fresh run only: --resume continues the run, it does not re-score the model as a
    second epoch 0 (which would also reset the best to whatever the resumed model scores)."""
    _trainer(tmp_path, eval_fn=_scripted([5, 6]), epochs=1).fit(score_start=True)
    assert _val_epochs(tmp_path) == [0, 1]
    best = _trainer(tmp_path, eval_fn=_scripted([4, 3]), epochs=2).fit(resume=True, score_start=True)
    assert _val_epochs(tmp_path) == [0, 1, 2]
    assert best["epoch"] == 1 and best["val/rsum"] == 6  # epoch 2 (4) does not beat epoch 1 (6)


def test_a_start_score_that_is_not_a_number_does_not_become_the_best(tmp_path, caplog):
    """A NaN validation score before training (epoch 0) must not be kept as the best: every later epoch would
    compare against NaN, lose, and RUN/model would stay the untrained start."""
    with caplog.at_level("WARNING"):
        best = _trainer(tmp_path, eval_fn=_scripted([math.nan, 1, 2]), epochs=2).fit(score_start=True)
    assert _val_epochs(tmp_path) == [0, 1, 2]
    assert best["epoch"] == 2 and best["val/rsum"] == 2
    assert "no epoch beat the model training started from" not in caplog.text


def test_a_resumed_run_that_fails_before_its_next_epoch_keeps_its_files(tmp_path):
    """discard_unfinished_run is for a fresh run only: a --resume that fails in its first epoch must leave the
    checkpoint and metrics it resumed from."""
    _trainer(tmp_path, epochs=1).fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    again = _trainer(tmp_path, epochs=2)

    def broken(logger):
        raise RuntimeError("boom")

    again._train_epoch = broken
    with pytest.raises(RuntimeError, match="boom"):
        again.fit(resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert (tmp_path / "metrics.jsonl").is_file()


# -- train/guards.py -------------------------------------------------------------------------------------------------


def test_one_shared_validation_photo_is_warned_about(caplog):
    """warn_of_shared_photos warns from the first photo both sets hold, with the count."""
    with caplog.at_level("WARNING"):
        warn_of_shared_photos(["a.jpg", "b.jpg"], ["b.jpg", "c.jpg", "d.jpg"], "--val-pairs")
    assert "1 of the 3 validation photos (--val-pairs) are training photos too" in caplog.text


def test_overwrite_after_a_replacement_that_saved_an_epoch_stashes_the_current_run(tmp_path):
    """A stash left beside a run that has a checkpoint (the replacement saved its epoch, then was killed before
    forgetting the stash) is stale: --overwrite replaces it with the current run, which a failing new run puts back."""
    run = tmp_path / "run"
    (run / REPLACED_RUN).mkdir(parents=True)
    (run / REPLACED_RUN / "checkpoint.pt").write_bytes(b"oldest")
    (run / "checkpoint.pt").write_bytes(b"current")
    (run / "metrics.jsonl").write_text("current")
    prepare_run_folder(run, overwrite=True)
    assert sorted(p.name for p in (run / REPLACED_RUN).iterdir()) == ["checkpoint.pt", "metrics.jsonl"]
    assert (run / REPLACED_RUN / "checkpoint.pt").read_bytes() == b"current"
    assert discard_unfinished_run(run) is True
    assert (run / "checkpoint.pt").read_bytes() == b"current" and (run / "metrics.jsonl").read_text() == "current"


def test_a_stash_that_cannot_be_put_back_does_not_hide_the_error(tmp_path, monkeypatch):
    """discard_unfinished_run runs inside an exception handler: an OSError moving the stash back returns False
    (the stash stays for the user) instead of raising over the error that stopped the run."""
    import polymodal.train.guards as guards

    run = tmp_path / "run"
    (run / REPLACED_RUN).mkdir(parents=True)
    (run / REPLACED_RUN / "checkpoint.pt").write_bytes(b"old")

    def refuse(src, dst):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(guards.os, "replace", refuse)
    assert discard_unfinished_run(run) is False
    assert (run / REPLACED_RUN / "checkpoint.pt").read_bytes() == b"old"


def test_an_unfinished_run_leaves_a_plot_alone(tmp_path):
    """curves.png is `polymodal plot`'s, not a run's: a fresh run that fails before its first epoch removes what
    it wrote but not the plot."""
    (tmp_path / "curves.png").write_bytes(b"png")
    (tmp_path / "metrics.jsonl").write_text("{}")
    assert discard_unfinished_run(tmp_path) is False
    assert (tmp_path / "curves.png").read_bytes() == b"png" and not (tmp_path / "metrics.jsonl").exists()


# -- cli_train.py: architecture settings of a continued model --------------------------------------------------------


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"embed_dim": 16, "image_head": "linear", "itm_head": False}))
    return folder


def test_one_differing_architecture_setting_is_refused(model_folder):
    """A single setting that differs from the continued model's is refused, not only two or more."""
    from polymodal.cli_train import check_arch_of_continued_model

    with pytest.raises(PolymodalError, match=r"keeps its own architecture \(embed_dim 16\), so embed_dim 32"):
        check_arch_of_continued_model({"model": str(model_folder), "arch": {"embed_dim": 32}})


def test_settings_the_model_does_not_record_or_that_still_apply_are_taken(model_folder):
    """itm_head still applies to a continued model (VQA's ITM head), and a setting the model's config.json does not
    hold cannot conflict with it: neither is refused."""
    from polymodal.cli_train import check_arch_of_continued_model

    check_arch_of_continued_model({"model": str(model_folder), "arch": {"itm_head": True, "dropout": 0.3,
                                                                         "embed_dim": 16}})


def test_a_folder_whose_config_is_not_json_is_left_to_the_trainer(model_folder):
    """A --model folder whose config.json does not parse is not this check's to judge (the trainer says what
    --model takes): no JSONDecodeError traceback from here."""
    from polymodal.cli_train import check_arch_of_continued_model

    (model_folder / "config.json").write_text("{not json")
    check_arch_of_continued_model({"model": str(model_folder), "arch": {"embed_dim": 32}})


def test_a_built_in_model_keeps_its_architecture_too():
    """--model default (a built-in, found among the package's models) refuses a differing --embed-dim as a folder
    does."""
    from polymodal.cli_train import check_arch_of_continued_model
    from polymodal.resources import HERE

    dim = json.loads((HERE / "models" / "default" / "config.json").read_text())["embed_dim"]
    with pytest.raises(PolymodalError, match=f"--model default keeps its own architecture \\(embed_dim {dim}\\)"):
        check_arch_of_continued_model({"model": "default", "arch": {"embed_dim": dim + 1}})


def test_resuming_a_run_whose_settings_recorded_an_ignored_architecture_is_not_refused(tmp_path, monkeypatch):
    """The architecture check is for starting a run, not for --resume: a run an older version started with
    `train captioner --model captioner --lora-rank 4` recorded lora_rank 4 (the captioner's is 16) in
    train_config.json; resuming it must not be refused for a flag the user does not pass again."""
    import polymodal.train.captioning as captioning

    calls = []

    def train(recipe, resume=False, **kwargs):
        calls.append((recipe.arch.lora_rank, resume))
        return {"step": 2, "epoch": 2}

    monkeypatch.setattr(captioning, "train_captioner", train)
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({
        "pairs": [str(tmp_path / "p.jsonl")], "out": str(run), "model": "captioner", "arch": {"lora_rank": 4},
        "train": {"epochs": 1}}))
    assert cli.main(["train", "captioner", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert calls == [(4, True)]


# -- train/contrastive.py, vqa.py, captioning.py, pretrain.py -------------------------------------------------------


def test_twenty_validation_photos_are_enough_and_one_shared_photo_is_named(gallery, tmp_path, caplog):
    """The warning asks for MIN_VAL_PHOTOS (20) or more: exactly 20 is not warned about; one validation photo that
    training also sees is."""
    from polymodal.train.contrastive import MIN_VAL_PHOTOS

    names = _pngs(tmp_path, MIN_VAL_PHOTOS + 4)
    row = lambda n: json.dumps({"image": n, "caption": f"colour patch {n[1:4]}"}) + "\n"  # noqa: E731
    (tmp_path / "val.jsonl").write_text("".join(row(n) for n in names[:MIN_VAL_PHOTOS]))
    (tmp_path / "train.jsonl").write_text("".join(row(n) for n in names[MIN_VAL_PHOTOS - 1:]))
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "contrastive", "--pairs", str(tmp_path / "train.jsonl"), "--val-pairs",
                         str(tmp_path / "val.jsonl"), "--out", str(tmp_path / "run"), "--quiet", "--embed-dim", "16",
                         "--epochs", "1"]) == 0
    assert "validation photos (--val-pairs) are training photos too" in caplog.text
    assert f"1 of the {MIN_VAL_PHOTOS} validation photos" in caplog.text
    assert "only 20 validation photos" not in caplog.text


def test_continuing_a_vqa_model_scores_it_warns_of_shared_photos_and_counts_rows(gallery, tmp_path, caplog):
    """train vqa --model FOLDER: epoch 0 is the model before training; --val-qa photos that training sees are
    warned about; the unknown-answer warning counts rows (two rows with one unknown answer are 2); a new model,
    whose vocabulary leaves rare answers out on purpose, gets no such warning."""
    names = sorted(p.stem for p in gallery.glob("*.jpg"))[:4]
    rows = [{"image": str(gallery / f"{n}.jpg"), "question": q, "answer": n}
            for n in names for q in ("what is it?", "what is this?")]
    rows.append({"image": str(gallery / f"{names[0]}.jpg"), "question": "is it rare?", "answer": "rare"})
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "vqa", "--qa", str(qa), "--out", str(tmp_path / "new"), "--quiet", "--dim", "16",
                         "--epochs", "1", "--val-fraction", "0", "--min-answer-count", "2"]) == 0
    assert "answers outside" not in caplog.text  # "rare" is left out of a new vocabulary on purpose
    caplog.clear()
    odd = [{"image": str(gallery / f"{n}.jpg"), "question": "is it odd?", "answer": "odd"} for n in names[1:3]]
    qa2 = tmp_path / "qa2.jsonl"
    qa2.write_text("".join(json.dumps(r) + "\n" for r in rows + odd))
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "vqa", "--qa", str(qa2), "--val-qa", str(qa2), "--model",
                         str(tmp_path / "new" / "model"), "--out", str(tmp_path / "more"), "--quiet",
                         "--epochs", "1"]) == 0
    assert "4 of the 4 validation photos (--val-qa) are training photos too" in caplog.text
    assert f"3 of {len(rows) + 2} training rows have answers outside" in caplog.text  # 'odd' twice, 'rare' once
    assert _val_epochs(tmp_path / "more") == [0, 1]
    # with a head made for the run there is nothing to score first: a random head must never be kept as the model
    assert cli.main(["train", "vqa", "--qa", str(qa2), "--val-qa", str(qa2), "--model", str(tmp_path / "new" / "model"),
                     "--new-head", "--out", str(tmp_path / "fresh"), "--quiet", "--epochs", "1"]) == 0
    assert _val_epochs(tmp_path / "fresh") == [1]


class _Stop(Exception):
    pass


def test_fine_tuning_the_built_in_captioner_asks_to_score_it_first(gallery, tmp_path, monkeypatch):
    """train captioner --model captioner hands score_start=True to the trainer (RUN/model stays the captioner
    unless an epoch beats it)."""
    seen = {}

    def fit(self, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(Trainer, "fit", fit)
    names = sorted(p.stem for p in gallery.glob("*.jpg"))[:2]
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": f"a photo of a {n}"}) + "\n"
                             for n in names))
    with pytest.raises(_Stop):
        cli.main(["train", "captioner", "--pairs", str(pairs), "--val-pairs", str(pairs), "--model", "captioner",
                  "--out", str(tmp_path / "cap"), "--quiet", "--epochs", "1"])
    assert seen["score_start"] is True


def test_pretraining_warns_of_validation_photos_that_training_sees(pairs_file, tmp_path, monkeypatch,  # noqa: F811
                                                                 caplog):
    """train pretrain with --val-pairs the same file as --pairs: the shared photos are warned about (before any
    model is built)."""
    import polymodal.train.pretrain as pretrain

    def build_model(recipe, resume=False):
        raise _Stop

    monkeypatch.setattr(pretrain, "build_model", build_model)
    with caplog.at_level(logging.WARNING), pytest.raises(_Stop):
        cli.main(["train", "pretrain", "--pairs", str(pairs_file), "--val-pairs", str(pairs_file), "--out",
                  str(tmp_path / "pre"), "--quiet", "--epochs", "1"])
    assert "validation photos (--val-pairs) are training photos too" in caplog.text


# -- data/jsonl.py, data/pairs.py ------------------------------------------------------------------------------------


def test_one_skipped_row_is_one_row_and_needs_no_v(tmp_path, caplog):
    """One skipped row: 'skipped 1 unusable row (first: ...)', without '-v lists them all' (there is nothing more)."""
    from polymodal.eval.vqa import read_qa

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "is it red?", "answer": "yes"}, {"image": "a.png", "question": "q?"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        assert len(read_qa(tmp_path / "qa.jsonl")) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{tmp_path / 'qa.jsonl'}: skipped 1 unusable row (first: {tmp_path / 'qa.jsonl'}:2: "
                        "no answer)"]


@pytest.mark.parametrize("rows_file", ["pairs.csv", "PAIRS.JSONL"])
def test_a_folder_holding_a_csv_or_upper_case_rows_file_names_it(tmp_path, rows_file):
    """The rows file a --pairs folder holds is named whatever its kind (.csv, .tsv too) and case of suffix."""
    from polymodal.data.pairs import read_pair_sources

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / rows_file).write_text("image,caption\na.png,a red square\n" if rows_file.endswith("csv") else
                                      json.dumps({"image": "a.png", "caption": "a red square"}) + "\n")
    with pytest.raises(PolymodalError, match=f"{tmp_path} holds {rows_file}: to read its rows, pass that file"):
        read_pair_sources([str(tmp_path)])


def test_utf16_with_a_bom_and_no_ascii_up_front_is_named_utf16(tmp_path):
    """A UTF-16 BOM alone (no NUL byte in the first 4 KB: a long first caption in CJK) still says UTF-16."""
    from polymodal.data.pairs import read_pair_sources

    text = "\u56fe" * 3000 + '\n{"image": "a.png", "caption": "x"}\n'
    (tmp_path / "p.jsonl").write_bytes(text.encode("utf-16"))  # BOM + little-endian
    assert b"\x00" not in (tmp_path / "p.jsonl").read_bytes()[:4096]
    with pytest.raises(PolymodalError, match=r"p.jsonl is UTF-16 \(or binary\)"):
        read_pair_sources([str(tmp_path / "p.jsonl")])


# -- cli.py, index/store.py ------------------------------------------------------------------------------------------


def test_an_index_in_use_is_not_discarded(tmp_path):
    """discard_if_empty leaves an index whose writer lock another process holds (it answers False, no Timeout)."""
    from filelock import FileLock

    from polymodal.index import ImageIndex
    from test_cli_encoders_audit import FakeEmbedder

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.jpg").write_text("not a photo")
    index = ImageIndex(tmp_path / "db")
    index.update(tmp_path / "p", FakeEmbedder(), progress=False)
    lock = FileLock(str(index.lock_path))
    with lock:
        assert index.discard_if_empty() is False
    assert index.exists()


def test_an_existing_empty_index_is_kept_when_nothing_new_is_readable(capsys, spy_load, tmp_path):  # noqa: F811
    """Only a first run's index is discarded: one that existed before this run (here empty) stays."""
    from polymodal.index import ImageIndex
    from test_cli_encoders_audit import FakeEmbedder

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.jpg").write_text("not a photo")
    ImageIndex(tmp_path / "db").update(tmp_path / "p", FakeEmbedder(), progress=False)
    assert cli.main(["index", str(tmp_path / "p"), "--db", str(tmp_path / "db"), "--model", "fake"]) == 2
    err = capsys.readouterr().err
    assert "none of the 1 image file could be read" in err and "no index was made" not in err
    assert ImageIndex(tmp_path / "db").exists()


def test_a_first_prune_run_that_reads_nothing_leaves_no_index(capsys, spy_load, tmp_path):  # noqa: F811
    """--prune does not keep the empty index a first run made: it too would tie the folder to this run's model."""
    from polymodal.index import ImageIndex

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.jpg").write_text("not a photo")
    assert cli.main(["index", str(tmp_path / "p"), "--db", str(tmp_path / "db"), "--model", "fake", "--prune"]) == 2
    assert "no index was made" in capsys.readouterr().err
    assert not ImageIndex(tmp_path / "db").exists()


def test_a_control_character_in_a_skipped_file_name_is_shown_escaped(capsys, spy_load, tmp_path):  # noqa: F811
    """The skipped lines after an index run that kept its index show a newline in a name as \\x0a (one line)."""
    folder = tmp_path / "p"
    folder.mkdir()
    Image.new("RGB", (4, 4), "red").save(folder / "ok.png")
    (folder / "two\nlines.png").write_text("not a photo")
    assert cli.main(["index", str(folder), "--db", str(tmp_path / "db"), "--model", "fake"]) == 0
    out = capsys.readouterr().out
    assert f"  skipped {folder}/two\\x0alines.png: " in out


def test_an_error_naming_undecodable_bytes_prints_on_a_strict_utf8_stderr(tmp_path, monkeypatch):
    """A path typed with bytes that are not UTF-8 reaches an error message as surrogates: main prints it with
    backslash escapes instead of failing with UnicodeEncodeError on a UTF-8 terminal."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="utf-8", errors="strict"))
    db = str(tmp_path / "n\udcffo")
    assert cli.main(["search", "--db", db, "a cat"]) == 2
    sys.stderr.flush()
    assert b"no index at " in raw.getvalue() and b"n\\udcffo" in raw.getvalue()


def test_a_missing_index_target_with_a_latin1_name_is_shown_as_bytes(capsys, tmp_path):
    """`index` of a missing path whose name is not UTF-8 shows its bytes as \\xNN, as the skipped lines do."""
    target = os.path.join(str(tmp_path), os.fsdecode(b"caf\xe9"))
    assert cli.main(["index", target, "--db", str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/caf\\xe9: not found" in err


# -- cli_serve.py, serve/ --------------------------------------------------------------------------------------------


def test_a_port_in_use_asks_for_another_port():
    """EADDRINUSE is the port's fault, not the host's: 'pass another --port'."""
    from polymodal.cli_serve import _bind

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(PolymodalError, match="pass another --port") as caught:
            _bind("127.0.0.1", busy.getsockname()[1])
        assert "--host" not in str(caught.value)
    finally:
        busy.close()


def test_the_prompt_limit_counts_the_models_own_default_templates(lite, db, gallery, monkeypatch):
    """Without templates in the request, classify encodes each label with the model's DEFAULT_TEMPLATES: the
    labels x templates limit counts those, not one per label."""
    import base64

    from fastapi.testclient import TestClient

    from polymodal.serve.app import create_app
    from polymodal.serve.limits import ServeSettings

    monkeypatch.setattr(lite, "DEFAULT_TEMPLATES", ("a photo of a {}.", "a picture of a {}.", "an image of a {}."),
                        raising=False)
    image = base64.b64encode((gallery / "cat.jpg").read_bytes()).decode()
    with TestClient(create_app(lite, db, settings=ServeSettings(max_prompts=5))) as client:
        r = client.post("/v1/classify", json={"image": image, "labels": ["cat", "dog"]})
    assert r.status_code == 413, r.text
    assert r.json()["error"].startswith("2 labels x 3 templates = 6 prompts; the limit is 5")


def test_a_request_of_a_24_mp_photo_fits_the_default_request_limit():
    """ServeSettings' default per-request pixel budget (~1 GB of RGB) holds a 24 MP photo decoded whole (a PNG),
    as it holds a few dozen camera photos."""
    from polymodal.serve.limits import ServeSettings
    from polymodal.serve.service import Service

    buf = io.BytesIO()
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(buf, "PNG")
    svc = SimpleNamespace(draft_sizes={}, settings=ServeSettings())
    images = Service.decode(svc, [("big.png", buf.getvalue())], model=None)
    assert [im.size for im in images] == [(6000, 4000)]


# -- export/onnx_export.py -------------------------------------------------------------------------------------------


def test_the_export_gate_warning_stops_at_50_photos(tmp_path, caplog):
    """--val-pairs with 49 images is warned about (the R@5 gate can hardly refuse), with 50 it is not."""
    from polymodal.export.onnx_export import MIN_GATE_IMAGES, validation_set

    names = _pngs(tmp_path, MIN_GATE_IMAGES, size=4)
    for n, name in ((MIN_GATE_IMAGES - 1, "few.jsonl"), (MIN_GATE_IMAGES, "enough.jsonl")):
        (tmp_path / name).write_text("".join(json.dumps({"image": i, "caption": f"patch {i}"}) + "\n"
                                             for i in names[:n]))
    with caplog.at_level("WARNING"):
        validation_set(tmp_path / "few.jsonl")
    assert "--val-pairs has 49 images" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        validation_set(tmp_path / "enough.jsonl")
    assert "--val-pairs has" not in caplog.text
