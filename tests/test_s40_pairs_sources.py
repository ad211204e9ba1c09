"""A row given in two --pairs sources counts once, and the warning names both sources (it named only the image:
which file to clean was left to guess)."""

import json
import logging

from PIL import Image

from polymodal.data.pairs import read_pair_sources


def test_a_row_repeated_across_sources_names_both(tmp_path, caplog):
    for name in ("a", "b"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / f"{name}.jpg")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.csv"
    first.write_text(json.dumps({"image": "a.jpg", "caption": "a red square"}) + "\n")
    second.write_text("image,caption\na.jpg,a red square\nb.jpg,another red square\n")
    with caplog.at_level(logging.WARNING):
        pairs = read_pair_sources([first, second])
    assert len(pairs) == 2
    (image, why), = pairs.skipped
    assert image.endswith("a.jpg") and f"repeats in {second} the caption 'a red square'" in why
    assert f"given for it in {first}" in why and str(second) in caplog.text
