"""--batch-size is per process: resuming under another torchrun process count (or another --batch-size) changes the
global batch the run trains on; the run says so and names the flag that keeps it."""

import json
import logging

from polymodal.train.contrastive import _warn_of_another_global_batch


def test_a_resume_on_another_global_batch_is_warned_of_with_the_batch_size_that_keeps_it(tmp_path, caplog):
    (tmp_path / "train_config.json").write_text(json.dumps({"world_size": 1, "global_batch": 16}))
    with caplog.at_level(logging.WARNING):
        _warn_of_another_global_batch(tmp_path, batch=16, world=2)  # torchrun --nproc_per_node 2, same flags
    assert "global batch of 16 (1 process x 16)" in caplog.text and "--batch-size 8" in caplog.text
    caplog.clear()
    _warn_of_another_global_batch(tmp_path, batch=8, world=2)  # the same global batch: nothing to say
    (tmp_path / "train_config.json").write_text(json.dumps({"batch_size": 16}))  # a run from before: no record
    _warn_of_another_global_batch(tmp_path, batch=4, world=1)
    assert not caplog.text
