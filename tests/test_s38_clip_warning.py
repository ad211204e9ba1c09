"""Stop 38: the wide-ViT guess is logged once per file and process, not on every load."""

from __future__ import annotations

import logging

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from polymodal.models.clip import load_clip
from polymodal.models.openai_convert import hf_to_openai
from test_clip_checkpoints import _write_tokenizer_files


def test_the_wide_vit_warning_is_logged_once_per_file(tmp_path, caplog):
    n = _write_tokenizer_files(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    cfg = CLIPConfig(  # ViT-H's width, one small layer per tower
        text_config=dict(vocab_size=n, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
                         max_position_embeddings=16, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id, projection_dim=16),
        vision_config=dict(hidden_size=1280, intermediate_size=64, num_hidden_layers=1, num_attention_heads=16,
                           image_size=16, patch_size=8, projection_dim=16), projection_dim=16)
    state = hf_to_openai(CLIPModel(cfg).state_dict())
    torch.save(state, tmp_path / "a.pt")
    torch.save(state, tmp_path / "b.pt")
    with caplog.at_level(logging.WARNING):
        load_clip(tmp_path / "a.pt")
        load_clip(tmp_path / "a.pt")
        load_clip(tmp_path / "b.pt")
    assert caplog.text.count("no open_clip_config.json beside it") == 2  # a.pt once, b.pt once
    assert "a.pt" in caplog.text and "b.pt" in caplog.text
