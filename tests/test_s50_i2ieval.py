"""Stop 50, one's own labelled photos: `eval images` (image->image retrieval, each photo querying the others) and
`--templates-file` for zero-shot prompts. Fast: the colour-naming fake model of test_cli_encoders_audit."""

import json
import logging

import numpy as np
import pytest
from PIL import Image
from polymodal.errors import PolymodalError
from test_cli_encoders_audit import one_line_error, photos, run, spy_load  # noqa: F401 (fixtures)

SHADES = {"red": [(255, 0, 0), (235, 20, 0), (215, 0, 30)], "green": [(0, 255, 0), (20, 235, 0)],
          "blue": [(0, 0, 255), (0, 25, 230)]}


def _class_folders(root):
    for name, colours in SHADES.items():
        (root / name).mkdir(parents=True)
        for i, rgb in enumerate(colours):
            Image.new("RGB", (12, 10), rgb).save(root / name / f"{i}.png")
    return root


def test_metrics_leave_the_query_out_and_count_ties_against_it():
    from polymodal.eval.image_retrieval import image_retrieval_metrics

    angles = np.array([0, 0.1, 0.2, 1.0, 1.1, 3.0])  # unit vectors on a circle: neighbours by angle
    emb = np.stack([np.cos(angles), np.sin(angles)], 1)
    details = {}
    m = image_retrieval_metrics(emb, ["a", "a", "b", "b", "a", "c"], details=details)
    # query 0: a(0.1) b b a(1.1) -> hit at 1 and 4 of R = 2: AP@R = 1/2; query 1 ties a(0) with b(0.2): b first
    assert list(details["rank"][:5]) == [1, 2, 3, 2, 3] and not details["scored"][5]  # "c" has no other photo
    assert m == {"R@1": 0.2, "R@5": 1.0, "R@10": 1.0, "R_precision": 0.2, "MAP@R": 0.15, "queries": 5}
    rng = np.random.default_rng(0)  # against a plain loop over the definitions (Musgrave et al. 2020)
    x = rng.normal(size=(60, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = [str(v) for v in rng.integers(0, 4, 60)]
    p1, rp, ap = [], [], []
    for q in range(60):
        rel = np.array([labels[j] == labels[q] for j in np.argsort(-(x @ x[q])) if j != q])
        r = rel.sum()
        p1.append(rel[0]), rp.append(rel[:r].mean()), ap.append(sum(rel[i] * rel[:i + 1].mean() for i in range(r)) / r)
    m = image_retrieval_metrics(x, labels)
    assert (m["R@1"], m["R_precision"], m["MAP@R"]) == tuple(round(float(np.mean(v)), 4) for v in (p1, rp, ap))
    with pytest.raises(PolymodalError, match="at least two classes"):  # every other photo would be a hit
        image_retrieval_metrics(x[:3], ["a", "a", "a"])


def test_eval_images_over_class_folders(capsys, spy_load, tmp_path, caplog):  # noqa: F811
    root = _class_folders(tmp_path / "set")
    Image.new("RGB", (12, 10), (0, 0, 240)).save(root / "green" / "2.png")  # a "green" photo that is blue
    out_file = tmp_path / "items.jsonl"
    with caplog.at_level(logging.WARNING):
        code, out, _ = run(capsys, "eval", "images", "--labels-file", root, "--model", "fake", "--out", out_file,
                           "--ci")
    assert "R@10 is 1.0 by construction with 8 photos" in caplog.text
    line = json.loads(out)
    assert code == 0 and line["images"] == 8 and line["classes"] == 3 and line["queries"] == 8
    # every photo's nearest is one of its colour: 7 hits, the blue "green" one misses (and misleads a blue one)
    assert line["per_class"]["red"] == 1.0 and line["per_class"]["green"] < 1.0
    assert 0 < line["R@1"] < 1 and line["R@10"] == 1.0 and {"R_precision", "MAP@R", "R@1_ci95"} <= set(line)
    items = [json.loads(x) for x in out_file.read_text().splitlines()]
    odd = next(i for i in items if i["image"].endswith("green/2.png"))
    assert odd["label"] == "green" and odd["nearest_label"] == "blue" and odd["rank"] > 1


def test_eval_images_reads_a_labels_file_and_says_what_it_left_out(capsys, spy_load, tmp_path, caplog):  # noqa: F811
    root = _class_folders(tmp_path / "set")
    rows = [{"image": f"{c}/{i}.png", "label": c} for c, shades in SHADES.items() for i in range(len(shades))]
    rows += [{"image": "red/0.png", "label": "blue"}]  # the same photo again: it would find itself
    Image.new("RGB", (12, 10), (128, 128, 128)).save(root / "grey.png")
    rows += [{"image": "grey.png", "label": "grey"}]  # one photo of its label: a candidate, no query
    (root / "copy.png").write_bytes((root / "red" / "1.png").read_bytes())
    rows += [{"image": "copy.png", "label": "red"}]  # a copy under another name: a certain hit
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        code, out, _ = run(capsys, "eval", "images", "--labels-file", root / "labels.jsonl", "--model", "fake")
    line = json.loads(out)
    assert code == 0 and line["images"] == 9 and line["queries"] == 8 and line["skipped_rows"] == 1
    assert "repeat a photo" in caplog.text and "one photo (first: 'grey')" in caplog.text
    assert "1 photos are copies" in caplog.text and "certain hit" in caplog.text
    (root / "one.jsonl").write_text(json.dumps({"image": "red/0.png", "label": "red"}) + "\n"
                                    + json.dumps({"image": "red/1.png", "label": "red"}) + "\n")
    assert "at least two classes" in one_line_error(capsys, "eval", "images", "--labels-file", root / "one.jsonl",
                                                    "--model", "fake")
    assert not [c for c in spy_load.calls if c["name"] == "fake"][1:]  # refused before the model loaded again


def test_templates_file_reaches_classify_and_eval_zeroshot(capsys, spy_load, photos, tmp_path,  # noqa: F811
                                                           monkeypatch):
    fake = spy_load.models["fake"]
    seen = []
    real = fake.label_embeddings
    monkeypatch.setattr(fake, "label_embeddings", lambda labels, templates=None, **kw: seen.append(templates)
                        or real(labels, templates, **kw))
    templates = tmp_path / "templates.txt"
    templates.write_text("# prompts for my photos\na {} thing\n\n  a photo of a {}.  \na {} thing\n")
    code, out, _ = run(capsys, "classify", photos / "red.png", "--labels", "red,green", "--model", "fake",
                       "--templates-file", templates, "--template", "{}", "--json")
    assert code == 0 and seen[-1] == ["a {} thing", "a photo of a {}.", "{}"]  # comments, blanks, repeats dropped
    root = tmp_path / "set"
    for name, rgb in {"red": (255, 0, 0), "green": (0, 255, 0)}.items():
        (root / name).mkdir(parents=True)
        Image.new("RGB", (12, 10), rgb).save(root / name / "0.png")
    code, out, _ = run(capsys, "eval", "zeroshot", "--labels-file", root, "--model", "fake", "--templates-file",
                       templates)
    assert code == 0 and seen[-1] == ["a {} thing", "a photo of a {}."] and json.loads(out)["top1"] == 1.0


def test_a_bad_templates_file_is_one_line_before_the_model_loads(capsys, spy_load, photos, tmp_path):  # noqa: F811
    bad = tmp_path / "templates.txt"
    bad.write_text("a photo of a {}.\na photo of a {label}.\n")
    for argv in (("classify", photos / "red.png", "--labels", "red,green"),
                 ("eval", "zeroshot", "--labels-file", photos)):
        err = one_line_error(capsys, *argv, "--model", "fake", "--templates-file", bad)
        assert "line 2" in err and "has no '{}'" in err
    bad.write_text("# nothing but a comment\n\n")
    assert "holds no templates" in one_line_error(capsys, "classify", photos / "red.png", "--labels", "red,green",
                                                  "--model", "fake", "--templates-file", bad)
    assert "not found" in one_line_error(capsys, "classify", photos / "red.png", "--labels", "red,green",
                                         "--model", "fake", "--templates-file", tmp_path / "missing.txt")
    assert "--template: template 'a photo'" in one_line_error(capsys, "eval", "zeroshot", "--labels-file", photos,
                                                              "--model", "fake", "--template", "a photo")
    assert spy_load.calls == []  # every mistake was said before a model loaded


def test_the_image_retrieval_benchmark_labels_photos_by_their_captions(tmp_path, capsys, monkeypatch):
    from conftest import benchmark_module

    module = benchmark_module("image_retrieval", "s50")
    monkeypatch.setattr(module, "SHARED_DATA", tmp_path / "data")
    assert module.main([]) == 2  # no shared data: one line, no traceback
    assert capsys.readouterr().err.startswith("error: this benchmark needs ")
    pairs = tmp_path / "data" / "flickr8k-dev" / "pairs.jsonl"
    pairs.parent.mkdir(parents=True)
    captions = {"a.jpg": ["a dog runs"] * 3 + ["grass"] * 2, "b.jpg": ["a dog"] * 3 + ["on the beach"] * 2,
                "c.jpg": ["a skier", "snow", "snowy hill", "a man", "cold"], "d.jpg": ["a puppy"] * 2 + ["x"] * 3}
    pairs.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, cs in captions.items() for c in cs))
    rows = module.caption_labels(pairs)
    assert rows == [{"image": str(pairs.parent / "a.jpg"), "label": "dog"},
                    {"image": str(pairs.parent / "c.jpg"), "label": "snow"}]  # b names two groups, d too few times
