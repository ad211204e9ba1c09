"""classify: labels differing only in case or spaces are one label, said once, not once per batch of images (and
once per image of a batch holding an unreadable photo, retried one by one)."""

import json
import logging

import numpy as np
from PIL import Image

from polymodal import cli


def test_merged_labels_are_warned_of_once(tmp_path, capsys, caplog) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(35):
        path = tmp_path / f"p{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    paths.insert(3, str(tmp_path / "bad.jpg"))
    with caplog.at_level(logging.WARNING):
        code = cli.main(["classify", *paths, "--labels", "dog,cat,Dog, cat ", "--json"])
    out = json.loads(capsys.readouterr().out)
    notes = [r for r in caplog.records if "differing only in case" in r.getMessage()]
    assert code == 0 and len(notes) == 1 and "'Dog' as 'dog'" in notes[0].getMessage()
    assert [x["label"] for x in out[0]["labels"]] in (["dog", "cat"], ["cat", "dog"]) and "error" in out[3]
