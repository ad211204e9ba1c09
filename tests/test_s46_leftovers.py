"""Small flaws the stop-45 notes left alone (stop 46): a CLIP folder's do_resize false, Excel's sep= line and short
rows in CSV files, duplicate --choices, benchmark exit codes, a flag named that does not exist, retrieval's
seen_in_training, the out-of-vocabulary answer count, messages that name what the user passed, and an export's
transform with a key a newer polymodal added."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_clip_checkpoints import CLIPImageProcessorPil, make_tiny_clip


# -- 1. do_resize false -----------------------------------------------------------------------------------------------
def test_a_clip_folder_that_does_not_resize_gives_its_processors_pixels(tmp_path):
    from polymodal.models.clip import load_clip

    folder = make_tiny_clip(tmp_path / "hf")
    resized = load_clip(folder).version
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_resize=False)
    proc.save_pretrained(folder)
    rng = np.random.default_rng(0)
    # larger (cropped), smaller by an odd count (padded: where the odd pixel goes), one side each, the model's size
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((64, 97), (21, 25), (20, 45), (32, 32))]
    model = load_clip(folder)
    assert model.transform.resize == 0
    np.testing.assert_allclose(model.transform(images), proc(images=images, return_tensors="np")["pixel_values"],
                               atol=1e-5)
    assert "-" in model.version and "-" not in resized  # an index built when it was resized refuses these vectors


# -- 2. CSV files: Excel's sep= line, short rows ----------------------------------------------------------------------
def _photos(folder, names=("a", "b", "c")):
    folder.mkdir(exist_ok=True)
    for n in names:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / f"{n}.jpg")
    return folder


def test_excels_sep_line_names_the_separator_and_rows_keep_their_line_numbers(tmp_path):
    from polymodal.data.pairs import read_pair_source

    folder = _photos(tmp_path / "d")
    (folder / "semi.csv").write_text("sep=;\nimage;caption\na.jpg;a cat, sitting\nmissing.jpg;a dog\n")
    pairs = read_pair_source(folder / "semi.csv")
    assert [p.caption for p in pairs.pairs] == ["a cat, sitting"]
    assert pairs.skipped[0][0].endswith("semi.csv:4")
    (folder / "comma.csv").write_text('"sep=,"\r\nimage,caption\r\nb.jpg,a dog\r\n')
    assert [p.caption for p in read_pair_source(folder / "comma.csv").pairs] == ["a dog"]


def test_a_row_missing_only_cells_the_reader_does_not_need_is_read(tmp_path):
    from polymodal.data.pairs import read_pair_source

    folder = _photos(tmp_path / "d")
    (folder / "short.csv").write_text("image,caption,negatives,notes\na.jpg,a cat,a dog|a bird\nb.jpg,a dog\nc.jpg\n")
    pairs = read_pair_source(folder / "short.csv")
    assert [(p.caption, p.negatives) for p in pairs.pairs] == [("a cat", ("a dog", "a bird")), ("a dog", ())]
    assert [(w.rsplit(":", 1)[1], why) for w, why in pairs.skipped] == [
        ("4", "row does not have the header's 4 fields")]


# -- 3. --choices naming one answer twice -----------------------------------------------------------------------------
def test_choices_naming_one_answer_twice_is_one_error_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from polymodal import cli, cli_vqa

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda *a: pytest.fail("loaded the model"))
    for given, named in (("red,red", "(red, red)"), ("red, blue,Red", "(red, Red)"), ("a,b,a", "(a, a)")):
        assert cli.main(["vqa", str(tmp_path / "x.png"), "what colour?", "--choices", given]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"polymodal: error: --choices {given!r} names one answer twice {named}; pass each candidate "
                       "once"]


# -- 4. benchmark mistakes: one line, exit 2 --------------------------------------------------------------------------
@pytest.mark.parametrize("name, argv, said", [
    ("pretrain_fusion", ["--pairs", "{tmp}/none.jsonl"], "error: no pairs at {tmp}/none.jsonl"),
    ("pretrain_fusion", ["--pairs", "{tmp}/pairs.jsonl", "--runs", "multitask,bogus"], "error: unknown runs ['bogus']"),
    ("pretrain_fusion", ["--pairs", "{tmp}/pairs.jsonl", "--fusion", "bogus"], "error: unknown fusion 'bogus'"),
    ("serve_load", ["--runtime", "bogus"], "error: --runtime takes a comma-separated subset"),
    ("serve_load", ["--runtime", "torch", "--db", "{tmp}/no.idx"], "error: no --db at {tmp}/no.idx"),
])
def test_a_benchmark_command_line_mistake_is_one_line_and_exit_2(name, argv, said, tmp_path, capsys, monkeypatch):
    from test_s40_bench_missing_extras import _module

    (tmp_path / "pairs.jsonl").write_text('{"image": "a.jpg", "caption": "a cat"}\n')
    module = _module(name, monkeypatch)
    assert module.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(said.format(tmp=tmp_path)), err


# -- 5. a resume refusal names a --config key as a key, not as a flag that does not exist ----------------------------
def test_resuming_with_another_decision_heads_names_the_config_key(tmp_path):
    import json

    from polymodal.errors import PolymodalError
    from polymodal.models.fusion_encoder import FusionEncoderConfig
    from polymodal.train.run_settings import check_same_run
    from polymodal.train.trainer import TrainConfig

    arch = FusionEncoderConfig(fusion="late", dim=16)
    saved = {"arch": {**vars(arch), "decision_heads": False}, "train": {**vars(TrainConfig()), "lr": 0.5}}
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    with pytest.raises(PolymodalError, match=r'trained with "decision_heads": false \(a --config key; asked now: '
                                             r"true\), --lr 0.5 \(asked now: 0.001\);") as err:
        check_same_run(tmp_path, arch, TrainConfig(lr=0.001))
    assert "--decision-heads" not in str(err.value)


def test_every_recipe_setting_without_a_flag_is_named_as_a_config_key():
    import dataclasses

    from polymodal.cli_caption import CAPTION_FLAGS
    from polymodal.cli_pretrain import PRETRAIN_FLAGS
    from polymodal.cli_train import ARCH_KEYS, TRAIN_FLAGS
    from polymodal.cli_vqa import VQA_FLAGS
    from polymodal.models.captioner import CaptionerConfig
    from polymodal.models.dual_encoder import DualEncoderConfig
    from polymodal.models.fusion_encoder import FusionEncoderConfig
    from polymodal.train.run_settings import CONFIG_ONLY_KEYS
    from polymodal.train.trainer import TrainConfig

    flags = {*TRAIN_FLAGS, *VQA_FLAGS, *PRETRAIN_FLAGS, *CAPTION_FLAGS, *ARCH_KEYS}
    fields = {f.name for cls in (CaptionerConfig, DualEncoderConfig, FusionEncoderConfig, TrainConfig)
              for f in dataclasses.fields(cls)}
    assert fields - flags - {"answers"} == CONFIG_ONLY_KEYS  # (answers: the data's, never compared)


# -- 6. eval retrieval --out: an unreadable photo's items say whether it was trained on ------------------------------
def test_retrieval_error_items_say_seen_in_training_as_zeroshots_do(gallery, tmp_path, capsys):
    import json
    import shutil

    from polymodal import cli
    from polymodal.training_photos import model_folder, photo_hash, write_training_photos

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat", "rocket"):
        shutil.copyfile(gallery / f"{name}.jpg", photos / f"{name}.jpg")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "garbled.jpg").write_bytes(b"not a jpeg either")
    shutil.copytree(model_folder("default"), tmp_path / "mine")
    write_training_photos(tmp_path / "mine", {photo_hash(photos / n) for n in ("cat.jpg", "broken.jpg")})
    (photos / "pairs.jsonl").write_text("".join(json.dumps({"image": f"{n}.jpg", "caption": f"a {n}"}) + "\n"
                                                for n in ("cat", "rocket", "broken", "garbled")))
    out = tmp_path / "items.jsonl"
    assert cli.main(["eval", "retrieval", "--pairs", str(photos / "pairs.jsonl"), "--model", str(tmp_path / "mine"),
                     "--out", str(out)]) == 0
    capsys.readouterr()
    items = [json.loads(row) for row in out.read_text().splitlines()]
    seen = {(i["query"], i["image"].rsplit("/", 1)[-1], "error" in i): i["seen_in_training"] for i in items}
    assert seen == {(q, f"{n}.jpg", n in ("broken", "garbled")): n in ("cat", "broken")
                    for q in ("text", "image") for n in ("cat", "rocket", "broken", "garbled")}


# -- 7. the out-of-vocabulary warning compares each distinct answer once, and counts as before ----------------------
def test_answers_outside_the_vocabulary_compare_each_distinct_answer_once(caplog, monkeypatch):
    import logging

    from polymodal.data.answers import comparable_answer
    from polymodal.eval import vqa
    from polymodal.eval.vqa import QARow

    class Model:
        name, answers = "m", ["yes", "no", "2", "red"]

    pool = ["yes", "Yes", "two", "2", "red", "the red one", "blue", "a cat", "Blue!", "3"]
    rows = [QARow(f"{i}.jpg", "q?", pool[i % 10], None, tuple(pool[(i * k) % 10] for k in range(3)) if i % 3 else (),
                  ("red", "blue") if i % 7 == 0 else ()) for i in range(300)]
    known = {comparable_answer(a) for a in Model.answers}
    want = [r for r in rows
            if not r.choices and not any(comparable_answer(a) in known for a in r.answers or (r.answer,))]
    calls = []
    monkeypatch.setattr(vqa, "comparable_answer", lambda a: calls.append(a) or comparable_answer(a))
    with caplog.at_level(logging.WARNING):
        assert vqa.warn_of_answers_outside(Model(), rows) == len(want) > 0
    assert len(calls) == len(Model.answers) + len(set(pool))  # not one per row and annotator
    open_rows = sum(not r.choices for r in rows)
    names = ", ".join(map(repr, dict.fromkeys(r.answer for r in want)))
    assert caplog.messages == [f"{len(want)} of {open_rows} open questions have answers outside m's 4 answers "
                               f"({names}): they count as wrong, as the model can never give them"]


# -- 8. errors name what the user passed: "the answer", "question N" (as the blank-question error counts) ------------
def test_a_question_or_answer_that_is_not_unicode_is_named_as_what_was_passed(easy_vqa, gallery):
    from polymodal.errors import PolymodalError
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    img = gallery / "cat.jpg"
    batch = ([img] * 3, ["what shape?", "what colour?", "what \udcff?"])
    for call in (lambda: easy_vqa.predict(*batch), lambda: easy_vqa.predict_choices(*batch, [["red", "blue"]] * 3)):
        with pytest.raises(PolymodalError, match=r"^question 2 is not valid Unicode \(U\+DCFF at character 6"):
            call()
    with pytest.raises(PolymodalError, match=r"^the question is not valid Unicode"):
        easy_vqa.explain(img, "what \udcff?")  # the top answer's map ("text 1" before)
    itm = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, answers=["red", "blue"], itm_head=True))
    with pytest.raises(PolymodalError, match=r"^the answer is not valid Unicode \(U\+DCFF at character 3"):
        itm.explain(img, "what colour?", answer="gr\udcffeen")  # outside the vocabulary: scored by the ITM head
    with pytest.raises(PolymodalError, match=r"^a choice is not valid Unicode"):
        itm.answer(img, "what colour?", choices=["red", "gr\udcffeen"])


# -- 9. an export's transform with a key a newer polymodal added ------------------------------------------------------
@pytest.mark.parametrize("edit, says", [
    ({"antialias": True}, None),  # unknown: a warning, read with the keys known here
    ({"crop_box": None}, None),  # exports made before crop_box existed
    ({"mean": None}, "transform lacks mean"),  # a default mean (or size) would embed other pixels, silently
    ({"resize": None, "crop": None}, "transform lacks resize, crop"),
    ({"mean": [0.5]}, "mean needs 3 values"),
])
def test_an_exports_transform_warns_of_unknown_keys_and_refuses_missing_or_invalid_known_ones(tmp_path, caplog, edit,
                                                                                              says):
    import json
    import logging

    pytest.importorskip("onnxruntime")
    import polymodal
    from polymodal.errors import PolymodalError
    from test_s45_export import _tiny_export

    folder, config = _tiny_export(tmp_path / "exp")
    transform = {**config["transform"], **edit}
    config["transform"] = {k: v for k, v in transform.items() if v is not None}
    (folder / "onnx_config.json").write_text(json.dumps(config))
    if says is not None:
        with pytest.raises(PolymodalError, match="incomplete or damaged export") as err:
            polymodal.load(folder)
        assert says in str(err.value)
        return
    with caplog.at_level(logging.WARNING):
        model = polymodal.load(folder)
    assert (model.transform.resize, model.transform.crop) == (8, 8)
    assert model.encode_image([np.zeros((8, 8, 3), dtype=np.uint8)]).shape == (1, 1)
    unknown = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(unknown) == ("antialias" in edit) and all("holds antialias" in m for m in unknown)
