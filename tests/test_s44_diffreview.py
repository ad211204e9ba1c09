"""Stop 44 review of the stop's own changes (index, serve, data, apps, CLIP loading):

- A CSV caption quoted over lines (valid CSV: Excel, pandas and Python's csv write a cell's line breaks so) whose
  later line holds a comma ("It is sunny, and warm.") was dropped as "an unclosed quote?": a later line counted as a
  swallowed row whenever it held the delimiter. Now only a line naming an image (an image extension, or an existing
  file) does, so unclosed quotes are still reported.
- The cut-short merges.txt check ran only on bare vocab.json + merges.txt: a folder with a tokenizer_config.json
  beside them (what a slow tokenizer's save_pretrained writes, no tokenizer.json) loaded and split words silently.
- classify's note on merged labels read "'café' as 'café'" (two Unicode forms print alike) under "differing only in
  case or spaces": it now says the difference is how the accent is encoded.
"""

from __future__ import annotations

import csv
import shutil
import unicodedata

import pytest
from PIL import Image

from polymodal.data.pairs import _read_csv
from polymodal.errors import PolymodalError


def _photos(folder, names):
    for name in names:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name, format="PNG")


def test_a_caption_over_lines_with_a_comma_on_a_later_line_is_read(tmp_path):
    _photos(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    with open(tmp_path / "pairs.csv", "w", newline="") as f:  # as csv.writer (and Excel, pandas) quote a cell
        csv.writer(f).writerows([["image", "caption"], ["a.jpg", "A dog runs.\nIt is sunny, and warm."],
                                 ["b.jpg", "a cat"], ["c.jpg", "a bird"]])
    pairs, skipped = _read_csv(tmp_path / "pairs.csv")
    assert [p.caption for p in pairs] == ["A dog runs. It is sunny, and warm.", "a cat", "a bird"]
    assert skipped == []  # was: lines 2-3 "an unclosed quote?", the dog's caption lost


def test_an_unclosed_quote_over_rows_whose_images_have_no_extension_is_still_reported(tmp_path):
    _photos(tmp_path, ["p1", "p2", "p3"])
    (tmp_path / "pairs.csv").write_text('image,caption\np1,"a dog\np2,a cat\np3,a bird\n')
    pairs, skipped = _read_csv(tmp_path / "pairs.csv")
    assert pairs == [] and [w.rsplit(":", 1)[1] for w, _ in skipped] == ["2-4", "3", "4"]
    assert "unclosed" in skipped[0][1]


def test_a_cut_short_merges_txt_beside_a_tokenizer_config_is_one_error(tmp_path):
    from polymodal.models.clip import load_clip, load_tokenizer
    from test_clip_checkpoints import make_tiny_clip

    hf = make_tiny_clip(tmp_path / "clip")
    bare = tmp_path / "bare-tokenizer"
    header, *merges = (bare / "merges.txt").read_text().splitlines()

    def slow_layout(name, kept):  # vocab.json + merges.txt + tokenizer_config.json, no tokenizer.json
        folder = tmp_path / name
        shutil.copytree(hf, folder)
        (folder / "tokenizer.json").unlink()
        shutil.copy(bare / "vocab.json", folder)
        (folder / "merges.txt").write_text("\n".join([header, *kept]) + "\n")
        return folder

    whole = slow_layout("whole", merges)
    assert load_tokenizer(whole).tokenize("photo") == ["photo</w>"]  # guard: the whole file loads
    cut = slow_layout("cut", merges[:3])
    with pytest.raises(PolymodalError, match=r"3 merges for 8 merged tokens .* cut short"):
        load_clip(cut)  # loaded, and split "photo" into p, h, o, t, o


def test_the_merged_label_note_says_when_only_the_accent_encoding_differs():
    from polymodal.apps.zeroshot import merged_labels_note

    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    note = merged_labels_note([composed, decomposed, "dog", "Dog"])
    assert f"{decomposed!r} as {composed!r} (the same text, an accent encoded another way)" in note
    assert note.endswith("'Dog' as 'dog'")  # a case difference is said as before
