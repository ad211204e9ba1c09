"""Mutation-testing audit of the model loaders and towers: CLIP checkpoints (HF folders, OpenAI/open_clip layout),
the dual encoder, the plain-torch BERT and its tokenizer, the EfficientNet tower, the EmbeddingModel base and the
input checks. Each test pins behaviour that a plausible one-line change would break unnoticed by the other tests."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPModel

from polymodal.errors import PolymodalError
from polymodal.models.clip import _hf_weight_files, fingerprint, load_clip, transform_from_preprocessor
from polymodal.models.openai_convert import hf_to_openai, openai_to_hf
from test_clip_checkpoints import (TEXTS, CLIPImageProcessorPil, _images, _odd_image, _openai_forward, _ref_image, _ref_text,
                                   _write_tokenizer_files, make_tiny_clip)


# -- CLIP checkpoints -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("audit-clip"))


@pytest.fixture(scope="module")
def ref_model(hf_folder):
    return CLIPModel.from_pretrained(hf_folder, local_files_only=True).eval()


@pytest.fixture(scope="module")
def openai_sd(ref_model):
    return hf_to_openai(ref_model.state_dict())


@pytest.fixture(scope="module")
def clip_loaded(hf_folder):
    return load_clip(hf_folder)


def _save(sd, path):
    save_file(sd, str(path))
    return path


def test_long_texts_are_truncated_keeping_the_end_of_text_token(clip_loaded, openai_sd):
    """Texts longer than the context are cut to it and still pool at <|endoftext|> (OpenAI's argmax of the ids)."""
    texts = [" ".join(["cat dog"] * 12), "a cat"]
    enc = clip_loaded.tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    ids = enc["input_ids"]
    assert ids.shape[1] == 16 and ids[0, -1] == clip_loaded.tokenizer.eos_token_id  # really truncated, EOT kept
    assert len(clip_loaded.tokenizer(texts[0])["input_ids"]) > 16
    text, _ = _openai_forward(openai_sd, ids, torch.from_numpy(clip_loaded.transform(_images())))
    np.testing.assert_allclose(clip_loaded.encode_text(texts), text, atol=1e-5)


def test_fingerprint_reads_the_size_and_the_last_megabyte(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    mb = 1 << 20
    base = bytes(3 * mb)
    (tmp_path / "a" / "w.pt").write_bytes(base)
    (tmp_path / "b" / "w.pt").write_bytes(base[:-1] + b"\x01")  # differs only in its last byte
    (tmp_path / "c" / "w.pt").write_bytes(bytes(4 * mb))  # same first and last MB, another size
    (tmp_path / "d").mkdir(), (tmp_path / "e").mkdir()
    (tmp_path / "d" / "w.pt").write_bytes(bytes(mb + mb // 2))  # between one and two MB: the tail overlaps the head
    (tmp_path / "e" / "w.pt").write_bytes(bytes(mb + mb // 2 - 1) + b"\x01")
    prints = [fingerprint([tmp_path / d / "w.pt"]) for d in "abcde"]
    assert len(set(prints)) == 5 and all(len(p) == 12 for p in prints)
    assert fingerprint([tmp_path / "a" / "w.pt"]) == prints[0]  # deterministic


def test_preprocessor_fixed_size_and_crop_dicts_take_the_short_side(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 40, "width": 48}, "crop_size": {"height": 36, "width": 24}, "do_center_crop": True}))
    t = transform_from_preprocessor(tmp_path)
    assert (t.resize, t.crop, t.resample) == (40, 24, "bicubic")  # no "resample" key: CLIP's bicubic


@pytest.mark.parametrize("resample, name", [(2, "bilinear"), (0, "nearest")])
def test_preprocessor_resample_and_normalisation_match_the_processor(tmp_path, resample, name):
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=resample,
                                 image_mean=list(mean), image_std=list(std))
    proc.save_pretrained(tmp_path)
    t = transform_from_preprocessor(tmp_path)
    assert t.resample == name and t.mean == mean and t.std == std
    images = _odd_image()
    np.testing.assert_allclose(t(images), proc(images=images, return_tensors="np")["pixel_values"], atol=1e-5)


def test_fitted_transform_keeps_the_folders_resample_and_normalisation(openai_sd, hf_folder, tmp_path):
    """A preprocessor_config.json for another input size: the crop follows the model, the rest follows the file."""
    folder = tmp_path / "m"
    _write_tokenizer_files(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 2,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    model = load_clip(_save(openai_sd, folder / "w.safetensors"))
    t = model.transform
    assert (t.resize, t.crop, t.resample, t.mean, t.std) == (32, 32, "bilinear", (0.5,) * 3, (0.25,) * 3)


def test_sharded_hf_folder_fingerprints_every_shard(ref_model, hf_folder, tmp_path):
    folder = tmp_path / "sharded"
    ref_model.save_pretrained(folder, max_shard_size="100KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert _hf_weight_files(folder) == [folder / s for s in shards]
    assert _hf_weight_files(hf_folder) == [hf_folder / "model.safetensors"]
    model = load_clip(folder, tokenizer=hf_folder)
    assert model.version == fingerprint([folder / s for s in shards])
    np.testing.assert_allclose(model.encode_text(TEXTS[:2]), load_clip(hf_folder).encode_text(TEXTS[:2]), atol=1e-6)


def test_hf_version_follows_the_weights_and_preprocessing_not_the_config(ref_model, hf_folder, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(hf_folder, other)
    sd = {k: v.clone() for k, v in ref_model.state_dict().items()}
    sd["logit_scale"] += 1
    save_file(sd, str(other / "model.safetensors"))
    a, b = load_clip(hf_folder), load_clip(other)
    assert a.version != b.version
    assert a.version == fingerprint([hf_folder / "model.safetensors", hf_folder / "preprocessor_config.json"])
    assert b.logit_scale == pytest.approx(a.logit_scale * np.e, rel=1e-5)


def test_hf_weights_that_do_not_fit_the_config_are_refused(hf_folder, tmp_path):
    folder = tmp_path / "more-layers"
    shutil.copytree(hf_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 3  # the weights have 2: layer 2 would be random
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolymodalError, match="do not fit config.json.*text_model.encoder.layers.2"):
        load_clip(folder)


def test_hf_folder_takes_a_tokenizer_from_elsewhere(hf_folder, tmp_path):
    folder = tmp_path / "no-tok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(hf_folder / name, folder / name)
    with pytest.raises(PolymodalError, match="no CLIP tokenizer"):
        load_clip(folder)
    (folder / "vocab.json").write_text((hf_folder.parent / "bare-tokenizer" / "vocab.json").read_text())  # vocab without merges: unusable
    with pytest.raises(PolymodalError, match="no CLIP tokenizer.*vocab.json \\+ merges.txt"):
        load_clip(folder)
    np.testing.assert_allclose(load_clip(folder, tokenizer=hf_folder).encode_text(TEXTS),
                               load_clip(hf_folder).encode_text(TEXTS), atol=1e-6)


def test_non_clip_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(PolymodalError, match="model_type 'siglip', not 'clip'"):
        load_clip(tmp_path)


def test_state_dict_with_non_string_keys_is_refused(tmp_path):
    file = tmp_path / "odd.pt"
    torch.save({0: torch.zeros(1), "visual.conv1.weight": torch.zeros(1)}, file)
    with pytest.raises(PolymodalError, match="does not hold a state dict"):
        load_clip(file)


def test_openai_checkpoint_missing_a_weight_is_refused(openai_sd, hf_folder, tmp_path):
    sd = {k: v for k, v in openai_sd.items() if k != "transformer.resblocks.1.ln_2.bias"}
    with pytest.raises(PolymodalError, match="does not match a ViT CLIP: missing text_model.encoder.layers.1.layer_norm2"):
        load_clip(_save(sd, tmp_path / "w.safetensors"), tokenizer=hf_folder)


def test_hidden_act_gelu_reaches_both_towers(ref_model, openai_sd, hf_folder, tmp_path):
    """open_clip models trained with plain GELU: both towers must use it, as transformers would with that config."""
    file = _save(openai_sd, tmp_path / "w.safetensors")
    model = load_clip(file, tokenizer=hf_folder, hidden_act="gelu")
    cfg = model.model.config
    assert cfg.text_config.hidden_act == cfg.vision_config.hidden_act == "gelu"
    config = ref_model.config.to_dict()
    config["text_config"]["hidden_act"] = config["vision_config"]["hidden_act"] = "gelu"
    gelu = CLIPModel(type(ref_model.config).from_dict(config)).eval()
    gelu.load_state_dict(ref_model.state_dict())
    reference = (gelu, model.tokenizer, CLIPImageProcessorPil.from_pretrained(hf_folder))
    np.testing.assert_allclose(model.encode_text(TEXTS), _ref_text(reference), atol=1e-5)
    ref_img, _ = _ref_image(reference, _images())
    np.testing.assert_allclose(model.encode_image(_images()), ref_img, atol=1e-5)
    quick = load_clip(file, tokenizer=hf_folder)  # default quick_gelu: really another function
    assert not np.allclose(quick.encode_image(_images()), ref_img, atol=1e-4)


def test_folder_with_an_openai_file_and_an_unrelated_safetensors_loads_the_openai_one(openai_sd, ref_model, tmp_path):
    folder = tmp_path / "mixed"
    _write_tokenizer_files(folder)
    torch.save(openai_sd, folder / "ViT-tiny.pt")
    save_file({k: v.contiguous() for k, v in ref_model.state_dict().items()}, str(folder / "hf-layout.safetensors"))
    assert load_clip(folder).name == "ViT-tiny"
    _save(openai_sd, folder / "copy.safetensors")  # now two OpenAI-layout files: which one is ambiguous
    with pytest.raises(PolymodalError, match="several checkpoints.*pass the file"):
        load_clip(folder)


def test_folder_with_two_torch_files_is_ambiguous(openai_sd, tmp_path):
    _write_tokenizer_files(tmp_path)
    torch.save(openai_sd, tmp_path / "a.pt")
    torch.save(openai_sd, tmp_path / "b.pth")
    with pytest.raises(PolymodalError, match=r"several checkpoints \(a.pt, b.pth\)"):
        load_clip(tmp_path)


def test_torchscript_scalar_entries_are_ignored(openai_sd, ref_model, hf_folder, tmp_path):
    """OpenAI's JIT archives carry input_resolution, context_length and vocab_size as scalar entries."""
    sd = dict(openai_sd, input_resolution=torch.tensor(32), context_length=torch.tensor(16),
              vocab_size=torch.tensor(openai_sd["token_embedding.weight"].shape[0]))
    model = load_clip(_save(sd, tmp_path / "w.safetensors"), tokenizer=hf_folder)
    np.testing.assert_allclose(model.encode_text(TEXTS), load_clip(hf_folder).encode_text(TEXTS), atol=1e-5)


def test_towers_projecting_to_different_sizes_are_refused(openai_sd):
    sd = dict(openai_sd, **{"visual.proj": torch.zeros(64, 16)})
    with pytest.raises(PolymodalError, match="visual.proj projects to 16 but text_projection to 32"):
        openai_to_hf(sd)


def test_default_eos_is_the_last_vocab_entry_as_openai_argmax_pools(openai_sd, clip_loaded):
    from polymodal.models.clip import build_hf_clip

    config, _ = openai_to_hf(openai_sd)
    assert config.text_config.eos_token_id == openai_sd["token_embedding.weight"].shape[0] - 1
    model = build_hf_clip(openai_sd)  # no tokenizer given: the vocab's last id is <|endoftext|>
    ids = clip_loaded.tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    text, _ = _openai_forward(openai_sd, ids["input_ids"], torch.from_numpy(clip_loaded.transform(_images())))
    got = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()
    np.testing.assert_allclose(got, text, atol=1e-5)


def test_head_counts_that_do_not_divide_the_width_are_refused(openai_sd):
    with pytest.raises(PolymodalError, match="vision width 64 is not divisible by 3 heads; put the .*open_clip_config.json beside it, or pass vision_heads"):
        openai_to_hf(openai_sd, vision_heads=3)
    with pytest.raises(PolymodalError, match="text width 64 is not divisible by 3 heads; put .*, or pass text_heads"):
        openai_to_hf(openai_sd, text_heads=3)


def test_a_checkpoint_without_the_vit_patch_conv_is_refused_by_name(openai_sd, tmp_path):
    sd = {k: v for k, v in openai_sd.items() if k != "visual.conv1.weight"}
    with pytest.raises(PolymodalError, match="has no visual.conv1.weight"):
        load_clip(_save(sd, tmp_path / "w.safetensors"))


def test_resnet_clip_is_named(openai_sd):
    sd = {k: v for k, v in openai_sd.items() if not k.startswith("visual.")}
    sd.update({"visual.conv1.weight": torch.zeros(8, 3, 3, 3), "visual.layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1)})
    with pytest.raises(PolymodalError, match="ResNet CLIP"):
        openai_to_hf(sd)
    with pytest.raises(PolymodalError, match="missing visual.positional_embedding, visual.proj"):
        openai_to_hf({k: v for k, v in sd.items() if k != "visual.layer1.0.conv1.weight"})


def test_hf_to_openai_skips_position_id_buffers(ref_model):
    sd = dict(ref_model.state_dict())
    sd["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    out = hf_to_openai(sd)
    assert not any("position_ids" in k for k in out) and set(out) == set(hf_to_openai(ref_model.state_dict()))


# -- plain-torch BERT, its tokenizer and the sentence encoder -------------------------------------------------------
def _tiny_bert_config(**kw):
    from polymodal.encoders.bert import BertConfig

    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=20, type_vocab_size=2, layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    return BertConfig(**{**base, **kw})


def _varies_in_training(module_call):
    torch.manual_seed(0)
    return not torch.allclose(module_call(), module_call())


@pytest.mark.parametrize("hidden, attention", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5)])
def test_bert_dropout_of_each_kind_applies_in_training_only(hidden, attention):
    from polymodal.encoders.bert import BertModel

    torch.manual_seed(0)
    model = BertModel(_tiny_bert_config(hidden_dropout_prob=hidden, attention_probs_dropout_prob=attention))
    ids = torch.randint(1, 50, (2, 7))
    model.train()
    assert _varies_in_training(lambda: model(ids).last_hidden_state) == (hidden > 0 or attention > 0)
    model.eval()
    assert not _varies_in_training(lambda: model(ids).last_hidden_state)


def test_bert_hidden_dropout_sits_after_the_embeddings_and_each_sublayer():
    """As transformers' BertEmbeddings, BertSelfOutput and BertOutput: dropout on the embeddings and on each dense
    output before the residual LayerNorm."""
    from polymodal.encoders.bert import BertModel

    torch.manual_seed(0)
    model = BertModel(_tiny_bert_config(hidden_dropout_prob=0.5)).train()
    ids = torch.randint(1, 50, (2, 7))
    x = torch.randn(2, 7, 16)
    layer = model.encoder.layer[0]
    assert _varies_in_training(lambda: model.embeddings(ids, None))
    assert _varies_in_training(lambda: layer.attention.output(x, x))
    assert _varies_in_training(lambda: layer.output(torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1)), x))


@pytest.mark.parametrize("change", [{"position_embedding_type": "relative_key_query"}, {"layer_norm_eps": None},
                                    {"intermediate_size": None}])
def test_bert_configs_it_cannot_run_are_not_claimed(change):
    from polymodal.encoders import bert
    from polymodal.encoders.text import minilm_path

    raw = json.loads((minilm_path() / "config.json").read_text())
    changed = {k: v for k, v in {**raw, **change}.items() if v is not None}
    assert bert.supports(raw) and not bert.supports(changed)


def _tokenizer_folder(folder, special_pad, config_pad):
    """MiniLM's tokenizer.json with the pad token named in special_tokens_map.json and/or tokenizer_config.json."""
    from polymodal.encoders.text import minilm_path

    src = minilm_path()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    for name, pad in (("special_tokens_map.json", special_pad), ("tokenizer_config.json", config_pad)):
        data = {k: v for k, v in json.loads((src / name).read_text()).items() if k != "pad_token"}
        if pad is not None:
            data["pad_token"] = pad
        (folder / name).write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("special_pad, config_pad, pad_id", [
    ("[UNK]", None, 100), ("[UNK]", "[MASK]", 100), (None, {"content": "[MASK]", "__type": "AddedToken"}, 103),
    (None, "[MASK]", 103)])
def test_fast_tokenizer_pads_with_the_folders_pad_token_as_transformers_does(tmp_path, special_pad, config_pad, pad_id):
    from transformers import AutoTokenizer

    from polymodal.data.tokenizer import FastTokenizer

    folder = _tokenizer_folder(tmp_path / "tok", special_pad, config_pad)
    texts = ["a", "a b c d"]
    got = FastTokenizer.from_model_folder(folder, 256)(texts)
    want = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(texts, padding=True, return_tensors="np")
    assert got["input_ids"][0, -1] == pad_id and got["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])


@pytest.mark.parametrize("special_pad, config_pad", [(None, None), ("<no such token>", None)])
def test_fast_tokenizer_declines_a_folder_without_a_usable_pad_token(tmp_path, special_pad, config_pad):
    from polymodal.data.tokenizer import FastTokenizer

    assert FastTokenizer.from_model_folder(_tokenizer_folder(tmp_path / "t", special_pad, config_pad), 16) is None
    assert FastTokenizer.from_model_folder(tmp_path, 16) is None  # no tokenizer.json at all


@pytest.fixture(scope="module")
def fallback_folder(tmp_path_factory):
    """A plain gelu BERT saved as pytorch_model.bin only: the plain-torch BERT reads safetensors, so transformers runs."""
    from transformers import BertConfig, BertModel

    from polymodal.encoders.text import minilm_path

    folder = tmp_path_factory.mktemp("bin-bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, folder / name)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=300))
    model.save_pretrained(folder)
    if (folder / "model.safetensors").exists():  # transformers 5 writes safetensors only: rewrite it as a .bin
        from safetensors.torch import load_file

        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


def test_a_bin_only_bert_folder_runs_through_transformers_and_truncates(fallback_folder):
    from polymodal.encoders import bert
    from polymodal.encoders.text import SentenceEncoder

    encoder = SentenceEncoder(fallback_folder, max_length=64)
    assert not isinstance(encoder.model, bert.BertModel) and encoder._fast is None
    assert encoder.dim == 32
    batch = encoder.tokenize(["word " * 400, "a cat"])
    assert batch["input_ids"].shape == (2, 64) and batch["attention_mask"][1].sum() == 4
    with torch.no_grad():
        out = encoder(["word " * 400, "a cat"])
    assert out.shape == (2, 32)


# -- dual encoder ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dual():
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    torch.manual_seed(0)
    return DualEncoder(DualEncoderConfig(embed_dim=8, image_trainable_blocks=2, text_trainable_layers=2)).eval()


def _trainable(module):
    return [p.requires_grad for p in module.parameters()]


def test_set_trainable_unfreezes_the_head_conv_and_the_last_text_layers(dual):
    net, layers = dual.image_tower.net, dual.text_tower.model.encoder.layer
    try:
        dual.set_trainable(0, 0)
        assert not any(_trainable(net)) and not any(_trainable(dual.text_tower))
        dual.set_trainable(1, 1)
        assert all(_trainable(net._conv_head)) and all(_trainable(net._bn1)) and not any(_trainable(net._fc))
        assert [all(_trainable(layer)) for layer in layers] == [False] * 5 + [True]
        assert not any(_trainable(dual.text_tower.model.embeddings))
    finally:
        dual.set_trainable(2, 2)
    assert [all(_trainable(layer)) for layer in layers] == [False] * 4 + [True] * 2


def test_trained_state_holds_exactly_the_trained_parts(dual):
    keys = set(dual.trained_state())
    depth = {"image_tower": 4, "text_tower": 5}
    prefixes = {".".join(k.split(".")[:depth.get(k.split(".")[0], 1)]) for k in keys}
    assert {"image_head", "text_head", "log_logit_scale"} <= prefixes
    assert {p for p in prefixes if p.startswith("text_tower")} == {f"text_tower.model.encoder.layer.{i}" for i in (4, 5)}
    assert {p for p in prefixes if p.startswith("image_tower.net._blocks")} == {"image_tower.net._blocks.14",
                                                                                 "image_tower.net._blocks.15"}
    assert {"image_tower.net._bn1.running_mean", "image_tower.net._conv_head.weight"} <= keys
    assert not any(k.startswith(("image_tower.net._fc", "image_tower.net._conv_stem")) for k in keys)


def test_a_saved_folder_refuses_extra_weights_and_loads_in_eval_with_its_version(dual, tmp_path):
    from safetensors.torch import load_file

    from polymodal.models.dual_encoder import is_dual_encoder_folder, load_dual_encoder

    folder = dual.save(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    assert dual.version == hashlib.sha256(data).hexdigest()[:12]
    assert json.loads((folder / "config.json").read_text())["version"] == dual.version
    assert is_dual_encoder_folder(folder) and not is_dual_encoder_folder(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"type": "fusion"}))
    assert not is_dual_encoder_folder(tmp_path / "other")
    again = load_dual_encoder(folder)
    assert again.version == dual.version and not again.training and not again.image_head.training
    with torch.no_grad():
        torch.testing.assert_close(again._text_batch(["a dog"]), dual._text_batch(["a dog"]))
    state = load_file(str(folder / "model.safetensors"))
    state["text_tower.model.encoder.layer.0.output.dense.bias"] = torch.zeros(384)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(PolymodalError, match="unexpected.*layer.0.output.dense.bias"):
        load_dual_encoder(folder)


@pytest.mark.parametrize("settings, needle", [
    ({"image_features": "grid"}, "image_features must be 'pooled' or 'spatial'"),
    ({"text_head": "residual", "embed_dim": 256}, "residual text head keeps"),
    ({"image_head": "conse_residual", "embed_dim": 256}, "conse_residual head lives"),
    ({"image_head": "conse_residual", "embed_dim": 384, "image_features": "spatial"}, "conse_residual head lives"),
    ({"image_trainable_blocks": -1}, "image_trainable_blocks must be 0..16"),
    ({"text_trainable_layers": -1}, "text_trainable_layers must be 0..6"),
    ({"embed_dim": 0}, "embed_dim must be at least 1"),
    ({"embed_dim": -4}, "embed_dim must be at least 1"),
    ({"head_dropout": 1.5}, r"head_dropout must be in \[0, 1\)"),
    ({"logit_scale_init": float("inf")}, "logit_scale_init must be a finite number"),
    ({"text_head": "attention"}, "the text head gets one pooled sentence"),
    ({"image_features": "spatial"}, "only the attention head pools"),
])
def test_dual_encoder_config_refuses_more_bad_settings(settings, needle):
    from polymodal.models.dual_encoder import DualEncoderConfig

    with pytest.raises(PolymodalError, match=needle):
        DualEncoderConfig(**settings).validate()
    DualEncoderConfig(text_head="residual", image_head="conse_residual", embed_dim=384).validate()


def test_spatial_features_are_grid_tokens_in_row_major_order():
    from types import SimpleNamespace

    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    x = torch.randn(2, 5, 3, 4)
    owner = SimpleNamespace(config=DualEncoderConfig(image_features="spatial", image_head="attention"))
    tokens = DualEncoder._features(owner, x)
    assert tokens.shape == (2, 12, 5)
    torch.testing.assert_close(tokens[:, 0], x[:, :, 0, 0])
    torch.testing.assert_close(tokens[:, 6], x[:, :, 1, 2])
    owner.config = DualEncoderConfig()
    torch.testing.assert_close(DualEncoder._features(owner, x), x.mean(dim=(2, 3)))


def test_cache_signatures_and_the_pooled_text_path(dual):
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    spatial = DualEncoderConfig(image_features="spatial", image_head="attention", image_trainable_blocks=2)
    sig = DualEncoder.image_cache_signature.fget
    from types import SimpleNamespace

    other = SimpleNamespace(config=spatial, image_cut=14, transform=dual.transform)
    assert sig(dual) != sig(other) and "spatial" in sig(other)
    with torch.no_grad():
        pooled = dual.text_tower(["a dog", "two cats"])
        torch.testing.assert_close(dual.text_from_pooled(pooled), dual._text_batch(["a dog", "two cats"]))
        assert dual.text_from_pooled(pooled).shape == (2, 8)


# -- EmbeddingModel base, input checks, image tower ---------------------------------------------------------------
class _DropoutModel(torch.nn.Module):
    """An EmbeddingModel whose batch methods run a dropout layer: only eval mode makes them deterministic."""

    def __init__(self):
        from polymodal.models.base import EmbeddingModel

        torch.nn.Module.__init__(self)
        EmbeddingModel.__init__(self)
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3, 4)
        self.drop = torch.nn.Dropout(0.5)

    def _image_batch(self, pixels):
        return self.drop(self.proj(pixels.mean(dim=(2, 3))))

    def _text_batch(self, texts):
        return self.drop(self.proj(torch.tensor([[len(t), 1.0, -2.0] for t in texts])))


def _dropout_model():
    from polymodal.models.base import EmbeddingModel

    cls = type("DropoutModel", (_DropoutModel, EmbeddingModel), {"name": "d", "version": "1", "dim": 4})
    return cls()


def test_embedding_runs_in_eval_mode_returns_unit_rows_and_restores_the_mode():
    model = _dropout_model().train()
    pixels = np.random.default_rng(0).standard_normal((3, 3, 5, 5)).astype(np.float32)
    for embed, arg in ((model.embed_texts, ["a", "bb", "cccc"]), (model.embed_pixels, pixels)):
        a, b = embed(arg), embed(arg)
        assert model.training  # the caller's mode is back
        np.testing.assert_array_equal(a, b)  # no dropout while embedding
        assert a.dtype == np.float32 and a.shape == (3, 4)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    with torch.no_grad():
        raw = model.eval().proj(torch.tensor([[1.0, 1.0, -2.0]]))
    np.testing.assert_allclose(model.embed_texts(["a"]), torch.nn.functional.normalize(raw, dim=-1).numpy(), atol=1e-6)
    flipped = pixels[:, :, ::-1]  # a view with negative strides (e.g. an array flipped by the caller)
    np.testing.assert_allclose(model.embed_pixels(flipped), model.embed_pixels(flipped.copy()), atol=1e-6)


def test_small_input_checks():
    from pathlib import Path

    from polymodal.models.inputs import as_images, as_paths, one_question

    for blank in ("", "   ", "\n\t"):
        with pytest.raises(PolymodalError, match="the question is empty"):
            one_question(blank)
    assert one_question(" is it red? ") == " is it red? "
    assert as_paths(Path("a.jsonl")) == [Path("a.jsonl")] and as_paths("a.jsonl") == ["a.jsonl"]
    assert as_paths([Path("a"), "b"]) == [Path("a"), "b"]
    mask = np.zeros((4, 5), dtype=bool)
    assert len(as_images(mask)) == 1 and as_images(mask)[0] is mask  # a boolean image is one image, not 4 rows
    assert len(as_images(np.zeros((2, 4, 5, 3), dtype=bool))) == 2


def test_image_tower_chunks_large_no_grad_batches_in_order(dual):
    tower = dual.image_tower
    n = tower.INFERENCE_CHUNK + 3
    torch.manual_seed(4)
    pixels = torch.randn(n, 3, 32, 32)
    with torch.no_grad():
        together = tower.spatial(pixels)
        apart = torch.cat([tower.spatial(p[None]) for p in pixels])
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-4)


def test_set_precision_records_the_choice_and_fp32_runs_eager(dual, monkeypatch):
    from polymodal.encoders import frozen_trunk

    tower = dual.image_tower
    monkeypatch.setattr(frozen_trunk, "bf16_supported", lambda: True)
    monkeypatch.setattr(frozen_trunk, "FrozenTrunk", lambda module, precision: ("graph", precision))
    try:
        tower.set_precision("bf16")
        assert tower.precision == "bf16" and tower.frozen == ("graph", "bf16")
    finally:
        tower.set_precision("fp32")
    assert tower.precision == "fp32" and tower.frozen is None  # fp32: plain eager, bit-exact with training


def test_conse_residual_image_head_adds_the_conse_embedding_of_the_towers_logits():
    """The default model's image path: learned correction + ConSE(ImageNet logits of the pooled features)."""
    from types import SimpleNamespace

    from polymodal.models.conse import conse_embedding
    from polymodal.models.dual_encoder import N_IMAGE_BLOCKS, DualEncoder, DualEncoderConfig

    torch.manual_seed(5)
    fc, head = torch.nn.Linear(6, 12), torch.nn.Linear(6, 4)
    owner = SimpleNamespace(config=DualEncoderConfig(image_head="conse_residual", embed_dim=384), image_cut=N_IMAGE_BLOCKS,
                            image_head=head, image_tower=SimpleNamespace(net=SimpleNamespace(_fc=fc)),
                            class_matrix=torch.nn.functional.normalize(torch.randn(12, 4), dim=-1))
    feats = torch.randn(3, 6)
    with torch.no_grad():
        got = DualEncoder.image_from_cache(owner, feats)
        base = conse_embedding(fc(feats), owner.class_matrix)
        torch.testing.assert_close(got, head(feats) + base)
        assert base.abs().sum() > 0.1


def test_a_fully_frozen_image_tower_caches_features_and_starts_at_clips_temperature(dual):
    from types import SimpleNamespace

    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    assert dual.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert DualEncoder.text_frozen.fget(SimpleNamespace(config=DualEncoderConfig()))
    assert not DualEncoder.text_frozen.fget(SimpleNamespace(config=DualEncoderConfig(text_trainable_layers=1)))
    torch.manual_seed(6)
    pixels = torch.randn(2, 3, 32, 32)
    dual.config.image_trainable_blocks = 0
    try:
        with torch.no_grad():
            cached = dual.image_cache_input(pixels)
            assert cached.shape == (2, 1280)  # the pooled tower features, not a trunk activation
            torch.testing.assert_close(cached, dual.image_tower.spatial(pixels).mean(dim=(2, 3)))
            torch.testing.assert_close(dual._image_batch(pixels), dual.image_head(cached))
    finally:
        dual.config.image_trainable_blocks = 2
