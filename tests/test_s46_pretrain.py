"""Helper audit s46/pretrain: pretraining, freezing and progressive unfreezing, resume, as the README shows them."""

import pytest

from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.train.contrastive import ContrastiveRecipe


def _recipe(every, blocks, epochs):
    return ContrastiveRecipe(pairs=["p.jsonl"], out="run", train={"unfreeze_every": every, "epochs": epochs},
                             arch={"image_trainable_blocks": blocks})


@pytest.mark.parametrize("every,blocks,epochs,said", [
    (5, 2, 2, "opens no image block: the first opens in epoch 6; pass --epochs 11"),
    (2, 1, 2, "opens no image block: the first opens in epoch 3; pass --epochs 3"),
    (1, 4, 3, "opens 2 of the 4 image blocks .* pass --epochs 5, or --image-trainable-blocks 2"),
])
def test_an_unfreezing_schedule_past_the_last_epoch_is_refused(every, blocks, epochs, said):
    """--unfreeze-every 5 --image-trainable-blocks 2 --epochs 2 trained the heads alone (epoch k opens (k-1) // E
    blocks: none by epoch 2), without a word, while it cached the trunk under 2 blocks and ran them every step."""
    with pytest.raises(PolymodalError, match=said):
        _recipe(every, blocks, epochs).validate()


@pytest.mark.parametrize("every,blocks,epochs", [(1, 2, 3), (2, 2, 5), (3, 1, 10), (0, 2, 1)])
def test_a_schedule_that_opens_every_block_in_time_still_trains(every, blocks, epochs):
    _recipe(every, blocks, epochs).validate()


def test_the_cli_says_it_in_one_line_with_exit_2(tmp_path, capsys):
    rc = main(["train", "contrastive", "--pairs", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "run"),
               "--unfreeze-every", "5", "--image-trainable-blocks", "2", "--epochs", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "opens no image block" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
