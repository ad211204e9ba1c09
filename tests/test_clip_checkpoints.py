"""Real-CLIP loading: tiny random CLIPs saved in HF and OpenAI layouts must embed exactly as transformers does."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

try:  # transformers 5.4+ names the PIL processor apart (its CLIPImageProcessor is the torchvision one)
    from transformers import CLIPImageProcessorPil
except ImportError:  # 4.56-5.3: CLIPImageProcessor is the PIL one
    from transformers import CLIPImageProcessor as CLIPImageProcessorPil

from polymodal.errors import PolymodalError
from polymodal.models.clip import ClipModel, load_clip, load_openai_clip
from polymodal.models.openai_convert import hf_to_openai, openai_to_hf

TEXTS = ["a cat", "a photo of a dog", "", "cat dog cat dog cat dog cat dog cat dog cat dog cat dog"]  # last > 16 tokens
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def _write_tokenizer_files(folder):
    """A byte-level BPE vocab (all bytes, word-final variants, a few merges) with OpenAI's specials last."""
    alphabet = sorted(ByteLevel.alphabet())
    merges = ["c a", "ca t</w>", "d o", "do g</w>", "p h", "ph o", "pho t", "phot o</w>"]
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["ca", "cat</w>", "do", "dog</w>", "ph", "pho", "phot",
                                                          "photo</w>"]
    vocab = {t: i for i, t in enumerate(tokens + list(SPECIALS))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def make_tiny_clip(folder):
    """Tiny HF CLIP folder: model.safetensors + config.json, tokenizer.json, preprocessor_config.json."""
    bare = folder.parent / "bare-tokenizer"  # vocab.json + merges.txt only, as users have beside OpenAI .pt files
    vocab_size = _write_tokenizer_files(bare)
    tok = CLIPTokenizer.from_pretrained(bare)
    tok.save_pretrained(folder)
    # widths are multiples of 64 so OpenAI's heads = width // 64 rule (1 head) holds for the round trip
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, max_position_embeddings=16, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, projection_dim=32),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                           image_size=32, patch_size=8, projection_dim=32),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # perturb everything so zero biases / unit norms cannot hide a mapping mistake
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(hf_folder):
    model = CLIPModel.from_pretrained(hf_folder, local_files_only=True).eval()
    return model, CLIPTokenizer.from_pretrained(hf_folder), CLIPImageProcessorPil.from_pretrained(hf_folder)


def _images():
    rng = np.random.default_rng(0)
    # sizes whose short-side resize to 32 is exact, so our PIL resize and HF's agree pixel for pixel
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((64, 96), (40, 32), (32, 32))]


def _ref_text(reference, texts=TEXTS):
    model, tok, _ = reference
    enc = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(**enc)
    return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()


def _ref_image(reference, images):
    model, _, proc = reference
    pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy(), pixels


def _assert_matches_reference(model, reference):
    np.testing.assert_allclose(model.encode_text(TEXTS), _ref_text(reference), atol=1e-5)
    ref, _ = _ref_image(reference, _images())
    np.testing.assert_allclose(model.encode_image(_images()), ref, atol=1e-5)


def test_hf_folder_matches_transformers(hf_folder, reference):
    model = load_clip(hf_folder)
    assert isinstance(model, ClipModel)
    assert model.dim == 32 and model.name == hf_folder.name and len(model.version) == 12
    assert model.logit_scale == pytest.approx(float(reference[0].logit_scale.detach().exp()))
    assert (model.transform.resize, model.transform.crop, model.transform.resample) == (32, 32, "bicubic")
    _assert_matches_reference(model, reference)


def test_loading_a_hf_folder_draws_no_progress_bar_and_leaves_the_setting(hf_folder, capfd):
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()  # (another test or transformers itself may have set it)
    try:
        hf_logging.enable_progress_bar()
        capfd.readouterr()
        load_clip(hf_folder)
        assert "Loading weights" not in capfd.readouterr().err  # transformers 5 draws one per load
        assert hf_logging.is_progress_bar_enabled()  # the caller's own setting is back
        hf_logging.disable_progress_bar()
        load_clip(hf_folder)
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def _odd_image():
    return [Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 67, 3), dtype=np.uint8))]


def test_image_transform_vs_clip_image_processor(hf_folder, reference):
    """Our numpy preprocessing gives CLIPImageProcessor's pixels, also for odd aspect ratios (measured max diff 0.0),
    so encode_image(PIL) equals transformers' processor + forward end to end."""
    model = load_clip(hf_folder)
    for images in (_images(), _odd_image()):
        ref_emb, ref_pixels = _ref_image(reference, images)
        np.testing.assert_allclose(model.transform(images), ref_pixels.numpy(), atol=1e-5)
        np.testing.assert_allclose(model.encode_image(images), ref_emb, atol=1e-5)


def _openai_forward(sd, input_ids, pixels):
    """OpenAI CLIP's forward, written from its model.py with torch's own MultiheadAttention, independent of
    transformers and of our key mapping: a mistake made the same way in both conversion directions shows here."""
    F = torch.nn.functional

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)

    def blocks(x, prefix, mask=None):
        width = x.shape[-1]
        n = len({k.split(".")[len(prefix.split(".")) - 1] for k in sd if k.startswith(prefix)})
        for i in range(n):
            p = f"{prefix}{i}."
            attn = torch.nn.MultiheadAttention(width, width // 64, batch_first=True)
            attn.load_state_dict({k[len(p) + 5:]: v for k, v in sd.items() if k.startswith(p + "attn.")})
            h = ln(x, p + "ln_1")
            x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            h = F.linear(ln(x, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
            x = x + F.linear(h * torch.sigmoid(1.702 * h), sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        return x

    with torch.no_grad():
        n = input_ids.shape[1]
        x = sd["token_embedding.weight"][input_ids] + sd["positional_embedding"][:n]
        x = ln(blocks(x, "transformer.resblocks.", torch.full((n, n), float("-inf")).triu(1)), "ln_final")
        text = x[torch.arange(len(x)), input_ids.argmax(-1)] @ sd["text_projection"]
        x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([sd["visual.class_embedding"].expand(len(x), 1, -1), x], 1) + sd["visual.positional_embedding"]
        x = blocks(ln(x, "visual.ln_pre"), "visual.transformer.resblocks.")
        image = ln(x[:, 0], "visual.ln_post") @ sd["visual.proj"]
    return F.normalize(text, dim=-1).numpy(), F.normalize(image, dim=-1).numpy()


def test_openai_semantics(reference, hf_folder, tmp_path):
    """Our loaded OpenAI-layout model agrees with an OpenAI-style forward on the same weights."""
    sd = hf_to_openai(reference[0].state_dict())
    file = tmp_path / "tiny.safetensors"
    save_file(sd, str(file))
    model = load_clip(file, tokenizer=hf_folder)
    ids = model.tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    pixels = torch.from_numpy(model.transform(_images()))
    text, image = _openai_forward(sd, ids, pixels)
    np.testing.assert_allclose(model.encode_text(TEXTS), text, atol=1e-5)
    np.testing.assert_allclose(model.encode_image(_images()), image, atol=1e-5)


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "wrapped", "compiled", "ddp-compiled"])
def test_openai_layout_round_trip(hf_folder, reference, tmp_path, fmt):
    ref_model = reference[0]
    sd = hf_to_openai(ref_model.state_dict(), ref_model.config)
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in sd and sd["visual.proj"].shape == (64, 32)
    if fmt == "safetensors":
        file = tmp_path / "tiny.safetensors"
        save_file(sd, str(file))
    else:
        file = tmp_path / "tiny.pt"
        prefix = {"wrapped": "module.", "compiled": "_orig_mod.", "ddp-compiled": "module._orig_mod."}.get(fmt, "")
        sd = {f"{prefix}{k}": v for k, v in sd.items()}  # DDP's, torch.compile's, both
        torch.save({"state_dict": sd} if fmt == "wrapped" else sd, file)
    model = load_clip(file, tokenizer=hf_folder.parent / "bare-tokenizer")
    assert model.dim == 32 and model.name == "tiny"
    assert model.model.config.vision_config.image_size == 32 and model.model.config.text_config.num_attention_heads == 1
    _assert_matches_reference(model, reference)  # no preprocessor_config beside the file: OpenAI's, crop = 32


def test_conversion_is_lossless(reference):
    ref_model = reference[0]
    hf_sd = ref_model.state_dict()
    config, back = openai_to_hf(hf_to_openai(hf_sd))
    assert config.vision_config.patch_size == 8 and config.text_config.max_position_embeddings == 16
    assert set(back) == {k for k in hf_sd if not k.endswith("position_ids")}
    assert all(torch.equal(back[k], hf_sd[k]) for k in back)


def test_openai_folder_with_tokenizer_beside(reference, hf_folder, tmp_path):
    folder = tmp_path / "ViT-tiny"
    _write_tokenizer_files(folder)
    torch.save(hf_to_openai(reference[0].state_dict()), folder / "weights.pt")
    model = load_clip(folder)  # the one checkpoint in the folder, tokenizer found beside it
    np.testing.assert_allclose(model.encode_text(TEXTS), _ref_text(reference), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # making the archive; OpenAI's files are ones
def test_torchscript_archive(reference, hf_folder, tmp_path):
    """OpenAI's own .pt files are TorchScript archives; torch.load(weights_only=True) refuses those."""
    sd = hf_to_openai(reference[0].state_dict())
    root = torch.nn.Module()
    for key, value in sd.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, torch.nn.Parameter(value.clone()))
    file = tmp_path / "ViT-tiny.pt"
    try:
        torch.jit.script(root).save(str(file))
    except Exception as exc:  # TorchScript is deprecated; skip if this torch cannot script any more
        pytest.skip(f"torch.jit.script unavailable: {exc}")
    model = load_openai_clip(file, tokenizer=hf_folder)
    np.testing.assert_allclose(model.encode_text(TEXTS), _ref_text(reference), atol=1e-5)


def test_version_tracks_weights(hf_folder, reference, tmp_path):
    sd = hf_to_openai(reference[0].state_dict())
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(sd, str(a))
    sd["logit_scale"] = sd["logit_scale"] + 1
    save_file(sd, str(b))
    tok = hf_folder.parent / "bare-tokenizer"
    assert load_clip(a, tokenizer=tok).version != load_clip(b, tokenizer=tok).version
    assert load_clip(a, tokenizer=tok).key != load_clip(hf_folder).key


# -- errors ---------------------------------------------------------------------------------------------------------
def test_empty_folder(tmp_path):
    with pytest.raises(PolymodalError, match="config.json.*visual.conv1.weight"):
        load_clip(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(PolymodalError, match="no such file or folder"):
        load_clip(tmp_path / "nope")


def test_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(PolymodalError, match="model_type 'bert'.*Hugging Face CLIP folder"):
        load_clip(tmp_path)


def test_hf_folder_without_weights(hf_folder, tmp_path):
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(PolymodalError, match="no model.safetensors or pytorch_model.bin"):
        load_clip(tmp_path)


def test_unrelated_pt(tmp_path):
    file = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1), "fc.bias": torch.zeros(2)}, file)
    with pytest.raises(PolymodalError, match="no visual.conv1.weight"):
        load_clip(file)


class _NotATensor:
    pass


def test_not_a_checkpoint(tmp_path):
    file = tmp_path / "junk.pt"
    file.write_bytes(b"not a torch file")
    with pytest.raises(PolymodalError, match="cannot read .* not a torch checkpoint's") as error:
        load_clip(file)
    assert "Python objects" not in str(error.value)  # the text file holds no pickled objects
    torch.save({"visual.conv1.weight": _NotATensor()}, file)
    with pytest.raises(PolymodalError, match="holds Python objects besides tensors"):
        load_clip(file)


def test_openai_without_tokenizer(reference, tmp_path):
    file = tmp_path / "tiny.pt"
    torch.save(hf_to_openai(reference[0].state_dict()), file)
    with pytest.raises(PolymodalError, match=r"put CLIP's vocab.json.*in its folder"):
        load_clip(file)


def test_openai_unexpected_keys(reference, hf_folder, tmp_path):
    sd = hf_to_openai(reference[0].state_dict())
    sd["visual.attn_pool.query"] = torch.zeros(3)
    file = tmp_path / "tiny.safetensors"
    save_file(sd, str(file))
    with pytest.raises(PolymodalError, match="unexpected visual.attn_pool.query"):
        load_clip(file, tokenizer=hf_folder)


def test_polymodal_load(hf_folder, reference):
    import polymodal

    model = polymodal.load(hf_folder)
    np.testing.assert_allclose(model.encode_text(TEXTS[:2]), _ref_text(reference, TEXTS[:2]), atol=1e-5)


def test_corrupt_hf_weights(hf_folder, tmp_path):
    for file in hf_folder.iterdir():  # config and tokenizer files (which ones depends on the transformers version)
        if file.suffix in (".json", ".txt"):
            (tmp_path / file.name).write_text(file.read_text())
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(PolymodalError, match="cannot load the CLIP weights"):
        load_clip(tmp_path)


def test_a_pickle_of_objects_gets_a_short_reason(tmp_path):
    file = tmp_path / "objects.pt"
    torch.save({"model": PolymodalError("an object, not a tensor")}, file)
    with pytest.raises(PolymodalError, match="Python objects besides tensors") as got:
        load_clip(file)
    assert "\n" not in str(got.value) and "weights_only" not in str(got.value)


# -- mutation-testing additions -------------------------------------------------------------------------------------
def test_openai_padded_vocab_pools_at_the_tokenizers_eot(reference, hf_folder, tmp_path):
    """Some checkpoints pad token_embedding beyond the tokenizer's vocab, so <|endoftext|> is not the last row:
    pooling must follow the tokenizer's EOT id (= OpenAI's argmax of ids), not assume vocab - 1."""
    sd = hf_to_openai(reference[0].state_dict())
    emb = sd["token_embedding.weight"]
    sd["token_embedding.weight"] = torch.cat([emb, torch.randn(3, emb.shape[1], generator=torch.Generator().manual_seed(0))])
    file = tmp_path / "padded.safetensors"
    save_file(sd, str(file))
    model = load_clip(file, tokenizer=hf_folder)
    assert model.model.config.text_config.eos_token_id == model.tokenizer.eos_token_id != len(sd["token_embedding.weight"]) - 1
    ids = model.tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    text, _ = _openai_forward(sd, ids, torch.from_numpy(model.transform(_images())))
    np.testing.assert_allclose(model.encode_text(TEXTS), text, atol=1e-5)


def test_head_counts_go_to_their_own_tower(reference):
    # vision_heads and text_heads are separate settings: neither may leak into the other tower's config
    sd = hf_to_openai(reference[0].state_dict())
    config, _ = openai_to_hf(sd, vision_heads=2, text_heads=4)
    assert (config.vision_config.num_attention_heads, config.text_config.num_attention_heads) == (2, 4)
    config, _ = openai_to_hf(sd, text_heads=2)
    assert (config.vision_config.num_attention_heads, config.text_config.num_attention_heads) == (1, 2)


def test_preprocessor_without_centre_crop(tmp_path):
    """do_center_crop=false: the model sees the whole resized image (crop = resize), as CLIPImageProcessor does."""
    from polymodal.models.clip import transform_from_preprocessor

    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 24, "width": 24}, do_center_crop=False)
    proc.save_pretrained(tmp_path)
    transform = transform_from_preprocessor(tmp_path)
    assert (transform.resize, transform.crop) == (32, 32)
    square = [Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))]
    np.testing.assert_allclose(transform(square), proc(images=square, return_tensors="np")["pixel_values"], atol=1e-5)


def test_a_text_cut_at_the_token_limit_is_warned_of_once(hf_folder, caplog):
    model = load_clip(hf_folder)  # max_position_embeddings 16
    with caplog.at_level(logging.WARNING):
        model.encode_text(["a cat", "a photo"])
    assert "limit" not in caplog.text
    with caplog.at_level(logging.WARNING):
        model.encode_text(["a cat " * 20, "a photo"])
        model.encode_text(["a dog " * 20])
    assert caplog.text.count("a text reached the CLIP text tower's limit of 16 tokens") == 1
