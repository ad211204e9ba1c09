"""A --config file spells a flag's key with dashes or underscores, at its top level and inside [arch] / [train]."""

from polymodal import cli
from polymodal.cli_train import TRAIN_FLAGS, recipe_settings
from polymodal.train.contrastive import ContrastiveRecipe


def test_dashed_keys_inside_sections(tmp_path):
    (tmp_path / "c.toml").write_text('embed-dim = 64\n[arch]\nhead-dropout = 0.2\n[train]\nwarmup-steps = 3\n')
    args = cli.build_parser().parse_args(["train", "contrastive", "--pairs", "p", "--out", "o",
                                          "--config", str(tmp_path / "c.toml")])
    recipe = ContrastiveRecipe.from_dict(recipe_settings(args, ("pairs", "out"), TRAIN_FLAGS))
    assert (recipe.arch.embed_dim, recipe.arch.head_dropout, recipe.train.warmup_steps) == (64, 0.2, 3)
