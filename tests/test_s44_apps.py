"""Zero-shot labels and heat maps (stop 44 review of the applications).

- A label written with a composed "é" and the same label with "e" plus a combining accent (macOS file names, some
  editors and web pages write the second) is one text to the tokenizer: as two classes they tied on every photo
  (a miss each in `eval zeroshot`, an extra class in its count) and `classify` listed the label twice, its score
  shared between the copies.
- save_heatmap checked "~/heat.png" under the home folder but wrote it to a folder named "~" in the working one.
"""

import json
import unicodedata

import numpy as np
from PIL import Image

from polymodal.apps.explain import save_heatmap
from polymodal.apps.zeroshot import distinct_labels, rank_labels
from polymodal.eval.zeroshot import keep_candidates, read_classes, read_labelled_images

COMPOSED, DECOMPOSED = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def test_a_label_in_two_unicode_forms_is_one_class_in_eval_zeroshot(tmp_path) -> None:
    assert COMPOSED != DECOMPOSED
    rows = [("a.png", COMPOSED), ("b.png", DECOMPOSED), ("c.png", "dog"), ("d.png", COMPOSED)]
    for name, _ in rows:
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps({"image": i, "label": l}) + "\n" for i, l in rows))
    _, labels = read_labelled_images(tmp_path / "labels.jsonl")
    assert sorted(set(labels)) == sorted({COMPOSED, "dog"})  # the spelling most rows use
    (tmp_path / "classes.txt").write_text(f"{DECOMPOSED}\ndog\n{COMPOSED}\n")
    classes = read_classes(tmp_path / "classes.txt")
    assert classes == [DECOMPOSED, "dog"]
    _, kept, outside = keep_candidates(["x", "y"], [COMPOSED, "dog"], classes, "labels")
    assert kept == [DECOMPOSED, "dog"] and outside == 0


def test_classify_ranks_a_label_in_two_unicode_forms_once() -> None:
    labels = [COMPOSED, DECOMPOSED, "dog"]
    assert distinct_labels(labels) == [COMPOSED, "dog"]
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # the tokenizer reads both forms as one text
    ranked = rank_labels(np.array([[1.0, 0.0]]), emb, labels, logit_scale=100.0)[0]
    assert [label for label, _ in ranked] == [COMPOSED, "dog"] and ranked[0][1] > 0.99


def test_save_heatmap_writes_a_tilde_path_under_home(tmp_path, monkeypatch) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 24), (200, 100, 50)).save(photo)
    out = save_heatmap(photo, np.random.default_rng(0).random((7, 7)), "~/heat.png", transform=None, legend=False)
    assert out == home / "heat.png" and Image.open(home / "heat.png").size == (320, 240)  # 10 times: to be seen
    assert not (work / "~").exists()
