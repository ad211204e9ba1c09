"""What a review of CLIP checkpoint loading found (s44): a config.json whose text eos_token_id is not the tokenizer's
end token, and a merges.txt cut short (or empty), both loaded and embedded texts wrongly without a word; each is now
one error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import save_file
from transformers import CLIPModel

from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.models.clip import load_clip
from polymodal.models.openai_convert import hf_to_openai
from test_clip_checkpoints import TEXTS, _images, make_tiny_clip


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("s44") / "clip")


def _with_text_eos(hf_folder, tmp_path, eos):
    folder = tmp_path / "copy" / hf_folder.name
    shutil.copytree(hf_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["eos_token_id"] = eos
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("eos", [49407, 5, None])  # transformers' default, a plain byte's id, none at all
def test_a_text_eos_token_id_the_tokenizer_does_not_end_texts_with_is_one_error(hf_folder, tmp_path, eos):
    """49407 (CLIPTextConfig's default, left in a config.json for a model with a smaller vocabulary) pooled every
    text at its first token: all texts embedded alike (cosine 1.0), under the folder's usual version."""
    folder = _with_text_eos(hf_folder, tmp_path, eos)
    with pytest.raises(PolymodalError, match=r"eos_token_id is .*tokenizer's end token <\|endoftext\|> has id 521"):
        load_clip(folder)


def test_the_cli_says_so_in_one_error_line(hf_folder, tmp_path, capsys):
    folder = _with_text_eos(hf_folder, tmp_path, 49407)
    image = tmp_path / "a.png"
    _images()[0].save(image)
    capsys.readouterr()
    code = cli.main(["classify", str(image), "--model", str(folder), "--labels", "cat,dog"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("polymodal: error:")]
    assert len(errors) == 1 and "eos_token_id" in errors[0]


def test_the_legacy_eos_token_id_2_still_loads_and_pools_at_the_end_token(hf_folder, tmp_path):
    """Guard: OpenAI's hub folders say 2 (transformers then pools at the highest id, <|endoftext|>): same vectors,
    same version as the tokenizer's own id."""
    plain = load_clip(hf_folder)
    legacy = load_clip(_with_text_eos(hf_folder, tmp_path, 2))
    np.testing.assert_allclose(legacy.encode_text(TEXTS), plain.encode_text(TEXTS), atol=1e-6)
    assert legacy.version == plain.version


def _openai_file_with_merges(hf_folder, tmp_path, keep):
    """An OpenAI-layout file beside vocab.json and a merges.txt holding its first `keep` merges (None: all)."""
    folder = tmp_path / "oai"
    folder.mkdir()
    save_file(hf_to_openai(CLIPModel.from_pretrained(hf_folder).state_dict()), str(folder / "tiny.safetensors"))
    bare = hf_folder.parent / "bare-tokenizer"
    shutil.copy(bare / "vocab.json", folder / "vocab.json")
    header, *merges = (bare / "merges.txt").read_text().splitlines()
    kept = merges if keep is None else merges[:keep]
    (folder / "merges.txt").write_text("\n".join([header, *kept]) + "\n" if keep != -1 else "")
    return folder / "tiny.safetensors"


@pytest.mark.parametrize("keep", [-1, 0, 3])  # an empty file, the header only, cut at a line break
def test_a_merges_txt_cut_short_is_one_error(hf_folder, tmp_path, keep):
    """It loaded (rc 0) and split "cat" into c, a, t: other token ids than the model's, every text embedded wrongly."""
    file = _openai_file_with_merges(hf_folder, tmp_path, keep)
    with pytest.raises(PolymodalError, match=r"merges for 8 merged tokens .* cut short"):
        load_clip(file)


def test_a_whole_merges_txt_loads(hf_folder, tmp_path):
    """Guard: the full file loads and tokenizes "cat" as one token."""
    model = load_clip(_openai_file_with_merges(hf_folder, tmp_path, None))
    assert model.tokenizer.tokenize("cat") == ["cat</w>"]
