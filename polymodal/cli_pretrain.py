"""`polymodal train pretrain`: a thin wrapper over `polymodal.train.pretrain` (ITM / MLM / MRM pretraining of a
fusion encoder on image-caption pairs). `add_parsers(sub, actions)` takes the "train" sub-action that
`polymodal.cli_train.add_parsers` returns."""

from __future__ import annotations

from polymodal.cli_options import CONFIG_HELP, FUSION_ARCH_FLAGS, TRAIN_LOOP_FLAGS, add_recipe_flags, add_run_options

# flag -> (recipe section, type): "train" = TrainConfig, "arch" = FusionEncoderConfig, "" = the recipe itself
PRETRAIN_FLAGS = {
    **TRAIN_LOOP_FLAGS, **FUSION_ARCH_FLAGS,
    "objectives": ("", str), "batch_size": ("", int), "val_fraction": ("", float), "negatives": ("", str),
    "hard_k": ("", int), "hard_fraction": ("", float), "mlm_rate": ("", float), "mlm_variants": ("", int), "mrm_rate": ("", float),
    "mrm_target": ("", str), "workers": ("", int), "freeze": ("", str), "split": ("", str), "val_split": ("", str),
}


def cmd_train_pretrain(args) -> int:
    from polymodal.cli_train import run_pairs_recipe
    from polymodal.train.pretrain import PretrainRecipe, train_pretrain

    return run_pairs_recipe(args, PRETRAIN_FLAGS, PretrainRecipe, train_pretrain)


def add_parsers(sub, actions: dict) -> None:
    s = actions["train"].add_parser(
        "pretrain", help="pretrain a fusion encoder on image-caption pairs: ITM (hard negatives), MLM, MRM")
    s.add_argument("--pairs", nargs="+", help="JSONL/CSV/Parquet file, caption folder or tar shards (several allowed)")
    s.add_argument("--val-pairs", nargs="+", help="validation pairs (default: split off --val-fraction by image)")
    s.add_argument("--out", help="run folder: model/ (fine-tune it with `polymodal train vqa --model RUN/model`), "
                                 "checkpoint.pt, metrics.jsonl")
    s.add_argument("--model", help="'new' (default) or a fusion-encoder folder to continue pretraining")
    s.add_argument("--config", help=CONFIG_HELP)
    s.add_argument("--fusion-options", help='JSON options for the fusion, e.g. \'{"layers": 2}\'')
    s.add_argument("--pixel-patches", action="store_true", help="add raw-pixel patch embeddings to the grid tokens")
    add_run_options(s)
    helps = {
        "seed": "seed of the initial weights, the data order, dropout, the validation split, ITM's negatives and "
                "the MLM and MRM masks (default: %(recipe_default)s)",
        "objectives": "weighted objectives, e.g. itm:1,mlm:1,mrm:0.5 (default)",
        "fusion": "fusion module (default co_attention; MLM needs fused text tokens, MRM fused image tokens)",
        "negatives": "contrastive model mining ITM hard negatives: default, a dual-encoder folder, or random",
        "hard_k": "draw each hard negative from the k most similar non-matching items (default 8)",
        "hard_fraction": "share of ITM training negatives that are hard, the rest uniform (default 0.5)",
        "mrm_target": "regress (1280-d cell features, default for a new model) or classify (their ImageNet class distribution)",
        "batch_size": "caption rows per objective per step (default 64)",
        "mlm_rate": "share of a caption's words masked for masked language modelling (at least one)",
        "mlm_variants": "masked copies of each caption cached; epoch e trains on copy e mod N",
        "mrm_rate": "share of the grid cells masked for masked region modelling (at least one), drawn per epoch",
        "freeze": "comma-separated parts not to train, continuing a model: projections, image_proj, text_proj, fusion, "
                  "itm, mlm, mrm",
    }
    add_recipe_flags(s, PRETRAIN_FLAGS, "polymodal.train.pretrain:PretrainRecipe", helps)
    s.set_defaults(func=cmd_train_pretrain)
