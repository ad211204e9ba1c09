"""Pure state-dict conversion between OpenAI/open_clip CLIP layout and Hugging Face `CLIPModel` layout.

OpenAI layout (also open_clip's for plain ViT models): `visual.conv1.weight`, `visual.transformer.resblocks.N.attn.
in_proj_weight`, `token_embedding.weight`, `text_projection`, ... The architecture is not stored, so it is inferred
from tensor shapes, as open_clip's `build_model_from_openai_state_dict` does.
"""

from __future__ import annotations

import re

import torch
from transformers import CLIPConfig

from polymodal.errors import PolymodalError
from polymodal.models.inputs import check_count

# Keys some checkpoints carry that hold no weights (OpenAI's JIT archives store these as scalars).
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")

_TOP = {  # OpenAI key -> HF key, for tensors copied as they are
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK = {  # inside one residual block, OpenAI suffix -> HF suffix
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOWERS = (  # OpenAI block prefix -> HF layer prefix
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
)


def _count_blocks(sd: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(found) + 1 if found else 0


# open_clip's ViTs wider than OpenAI's (ViT-H, ViT-g, ViT-bigG) use 16 vision heads of 80, 88 and 104 channels, not
# 64 (their widths divide by width // 64 too, so that guess loaded silently). Most were trained with GELU (LAION's);
# the "-quickgelu" ViT-H weights (DFN5B, MetaCLIP) were not: their open_clip_config.json says so.
OPEN_CLIP_VISION_HEADS = {1280: 16, 1408: 16, 1664: 16}


def default_arch(vision_width: int, text_width: int) -> tuple[str, int, int]:
    """(hidden_act, vision heads, text heads) for a state dict that does not say: OpenAI's (QuickGELU, width // 64)
    unless the vision width is one of open_clip's own (OPEN_CLIP_VISION_HEADS)."""
    if vision_width in OPEN_CLIP_VISION_HEADS:
        return "gelu", OPEN_CLIP_VISION_HEADS[vision_width], max(1, text_width // 64)
    return "quick_gelu", max(1, vision_width // 64), max(1, text_width // 64)


def widths(sd: dict) -> tuple[int, int]:
    """(vision width, text width) of an OpenAI-layout state dict."""
    return sd["visual.conv1.weight"].shape[0], sd["ln_final.weight"].shape[0]


def check_activation(hidden_act: str, where: str = "") -> None:
    """One error for an activation transformers cannot build (it would fail only as the model is built)."""
    from transformers.activations import ACT2FN

    if hidden_act not in ACT2FN:
        raise PolymodalError(f"{where}hidden_act {hidden_act!r} is not an activation transformers knows; OpenAI CLIP "
                             "uses 'quick_gelu', most open_clip (LAION) models 'gelu'")


def _check_options(vision_heads, text_heads, hidden_act) -> None:
    for name, heads in (("vision_heads", vision_heads), ("text_heads", text_heads)):
        check_count(heads, name, none_means="the checkpoint's shape's count")
    if hidden_act is not None:
        check_activation(hidden_act)


def infer_config(
    sd: dict,
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    hidden_act: str | None = None,
    eos_token_id: int | None = None,
) -> CLIPConfig:
    """Architecture from tensor shapes. Heads and the activation are not stored: None takes default_arch's
    (OpenAI's QuickGELU and width // 64, or open_clip's for its wider ViTs)."""
    _check_options(vision_heads, text_heads, hidden_act)
    required = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
                "positional_embedding", "ln_final.weight", "text_projection"]
    missing = [k for k in required if k not in sd]
    if missing:
        if any(k.startswith("visual.layer1.") for k in sd):
            raise PolymodalError("this is a ResNet CLIP (visual.layer1...); only ViT CLIP checkpoints are supported")
        raise PolymodalError(f"not an OpenAI-layout ViT CLIP state dict: missing {', '.join(missing)}")
    (v_width, t_width), patch = widths(sd), sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    embed_dim = sd["text_projection"].shape[1]
    if sd["visual.proj"].shape[1] != embed_dim:
        raise PolymodalError(
            f"visual.proj projects to {sd['visual.proj'].shape[1]} but text_projection to {embed_dim}; "
            "pass a CLIP checkpoint whose two towers share one embedding size"
        )
    vocab = sd["token_embedding.weight"].shape[0]
    v_layers = _count_blocks(sd, "visual.transformer.resblocks.")
    t_layers = _count_blocks(sd, "transformer.resblocks.")
    for name, layers, prefix in (("image", v_layers, "visual.transformer"), ("text", t_layers, "transformer")):
        if not layers:  # would load as a tower of no layers: every text (or image) of a length embeds alike
            raise PolymodalError(f"the checkpoint has no {name} tower blocks ({prefix}.resblocks.N.*): a partial or "
                                 "filtered state dict; pass the whole checkpoint")
    act, v_heads, t_heads = default_arch(v_width, t_width)
    hidden_act = hidden_act or act
    text = dict(
        vocab_size=vocab,
        hidden_size=t_width,
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=t_layers,
        num_attention_heads=text_heads or t_heads,
        max_position_embeddings=sd["positional_embedding"].shape[0],
        hidden_act=hidden_act,
        projection_dim=embed_dim,
        # OpenAI pools at argmax(token id): its <|endoftext|> is the last vocab entry.
        eos_token_id=vocab - 1 if eos_token_id is None else eos_token_id,
        bos_token_id=vocab - 2,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=v_width,
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=v_layers,
        num_attention_heads=vision_heads or v_heads,
        image_size=patch * grid,
        patch_size=patch,
        hidden_act=hidden_act,
        projection_dim=embed_dim,
    )
    for name, cfg in (("vision", vision), ("text", text)):
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise PolymodalError(
                f"{name} width {cfg['hidden_size']} is not divisible by {cfg['num_attention_heads']} heads; put the "
                f"checkpoint's open_clip_config.json beside it, or pass {name}_heads=N (in Python)"
            )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def openai_to_hf(state_dict: dict, **config_kw) -> tuple[CLIPConfig, dict]:
    """OpenAI-layout state dict -> (CLIPConfig, HF CLIPModel state dict). Unknown keys are passed through
    under their own names so a strict load reports them. config_kw: see infer_config."""
    sd = {k: v for k, v in state_dict.items() if k not in IGNORED_KEYS}
    config = infer_config(sd, **config_kw)
    out = {}
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()  # OpenAI: x @ proj; nn.Linear: x @ W.T
        else:
            out.update(_convert_block_key(key, value))
    return config, out


def _convert_block_key(key: str, value: torch.Tensor) -> dict:
    for src, dst in _TOWERS:
        if key.startswith(src):
            num, _, rest = key[len(src):].partition(".")
            base = f"{dst}{num}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                q, k, v = value.chunk(3, dim=0)  # nn.MultiheadAttention packs q, k, v along dim 0
                return {f"{base}self_attn.{n}_proj.{kind}": t.contiguous() for n, t in zip("qkv", (q, k, v))}
            if rest in _BLOCK:
                return {base + _BLOCK[rest]: value}
    return {key: value}  # unknown: left for the strict load to report


def hf_to_openai(hf_state_dict: dict, config: CLIPConfig | None = None) -> dict:
    """HF CLIPModel state dict -> OpenAI layout (e.g. to export for open_clip). config is accepted for
    symmetry; shapes carry all that the OpenAI layout needs."""
    top = {v: k for k, v in _TOP.items()}
    transposed = {v: k for k, v in _TRANSPOSED.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict = {}
    qkv: dict = {}
    for key, value in hf_state_dict.items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight
        if key in top:
            out[top[key]] = value
            continue
        if key in transposed:
            out[transposed[key]] = value.t().contiguous()
            continue
        for src, dst in _TOWERS:
            if key.startswith(dst):
                num, _, rest = key[len(dst):].partition(".")
                m = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
                if m:
                    qkv.setdefault(f"{src}{num}.attn.in_proj_{m.group(2)}", {})[m.group(1)] = value
                elif rest in block:
                    out[f"{src}{num}.{block[rest]}"] = value
                else:
                    raise PolymodalError(f"cannot map {key} to the OpenAI layout")
                break
        else:
            raise PolymodalError(f"cannot map {key} to the OpenAI layout")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
