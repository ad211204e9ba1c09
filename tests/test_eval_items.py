"""`eval ... --out FILE.jsonl --ci`: each item's result, and 95% bootstrap intervals beside the figures."""

import json

import numpy as np
import pytest
from test_choices_audit import FakeVQA, row

from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.eval.bootstrap import bootstrap_ci
from polymodal.eval.per_item import check_out
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.eval.vqa import vqa_accuracy


def test_bootstrap_interval_holds_the_mean_narrows_with_more_items_and_repeats() -> None:
    rng = np.random.default_rng(1)
    few, many = rng.random(50) < 0.6, rng.random(5000) < 0.6
    low, high = bootstrap_ci(few)
    assert low < few.mean() < high and bootstrap_ci(few) == [low, high]
    low2, high2 = bootstrap_ci(many)
    assert low2 < many.mean() < high2 and high2 - low2 < (high - low) / 4
    assert bootstrap_ci(np.zeros(40)) == [0.0, 0.0876]  # no spread to resample: Wilson, not [0, 0]
    assert bootstrap_ci(np.ones(20))[1] == 1.0 and 0.8 < bootstrap_ci(np.ones(20))[0] < 0.9
    assert bootstrap_ci([]) == [None, None]  # JSON null, not NaN


def test_grouped_items_are_resampled_together() -> None:
    rng = np.random.default_rng(0)
    per_photo = rng.random(200) < 0.3
    hits, photos = np.repeat(per_photo, 5), np.repeat(np.arange(200), 5)  # five captions that succeed together
    flat, grouped = bootstrap_ci(hits), bootstrap_ci(hits, photos)
    assert grouped[1] - grouped[0] > 1.5 * (flat[1] - flat[0])  # as wide as 200 photos allow, not 1,000 captions
    assert grouped[0] < hits.mean() < grouped[1]
    assert bootstrap_ci(np.zeros(10), np.repeat(np.arange(2), 5))[1] > bootstrap_ci(np.zeros(10))[1]  # n = 2 photos


def test_the_balanced_interval_is_that_of_the_mean_over_classes() -> None:
    rng = np.random.default_rng(0)
    # 900 photos of a class scored 0.9, 100 of a class scored 0.3: mean 0.84, balanced mean 0.6
    labels = np.array(["common"] * 900 + ["rare"] * 100)
    hits = np.where(labels == "common", rng.random(1000) < 0.9, rng.random(1000) < 0.3).astype(float)
    balanced = np.mean([hits[labels == c].mean() for c in ("common", "rare")])
    low, high = bootstrap_ci(hits, np.arange(1000), by=labels)
    plain = bootstrap_ci(hits, np.arange(1000))
    assert low < balanced < high and high < plain[0]  # the plain interval sits around 0.84, far above
    assert high - low > plain[1] - plain[0]  # the rare class's 100 photos make it wider
    assert bootstrap_ci(hits, np.arange(1000), by=labels) == [low, high]  # seeded
    one_class = bootstrap_ci(hits[:900], by=labels[:900])
    assert one_class == bootstrap_ci(hits[:900])  # one class: the balanced mean is the mean, resample for resample
    assert bootstrap_ci(np.ones(30), by=["a"] * 10 + ["b"] * 20) == bootstrap_ci(np.ones(30))  # Wilson


def test_retrieval_hands_back_the_ranks_its_recalls_come_from() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 8))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    owner = np.repeat(np.arange(6), 2)
    texts = images[owner] + rng.normal(scale=0.8, size=(12, 8))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    ranks: dict = {}
    metrics = retrieval_metrics(images, texts, owner, ranks)
    assert ranks["t2i"].shape == (12,) and ranks["i2t"].shape == (6,)
    assert metrics["t2i_R@1"] == pytest.approx(np.mean(ranks["t2i"] <= 1), abs=1e-4)
    assert metrics["i2t_median_rank"] == float(np.floor(np.median(ranks["i2t"])))  # open_clip's lower middle


def test_vqa_details_hold_each_rows_prediction_score_or_error() -> None:
    items: list = []
    out = vqa_accuracy(FakeVQA(), [row("a", "cat"), row("bad", "cat"), row("d", "yes", ["yes", "no"])], details=items)
    assert [i.get("predicted") for i in items] == ["cat", None, "no"]
    assert [i.get("score") for i in items] == [1.0, None, 0.0] and "cannot read bad" in items[1]["error"]
    assert out["accuracy"] == pytest.approx(0.5)


def test_out_is_checked_before_any_work(tmp_path) -> None:
    with pytest.raises(PolymodalError, match="is a folder"):
        check_out(str(tmp_path))
    with pytest.raises(PolymodalError, match="does not exist"):
        check_out(str(tmp_path / "no" / "items.jsonl"))
    check_out(str(tmp_path / "items.jsonl"))
    check_out(None)
    (tmp_path / "qa.jsonl").write_text("")
    with pytest.raises(PolymodalError, match="one of the data files being evaluated"):
        check_out(str(tmp_path / "qa.jsonl"), [str(tmp_path / "sub" / ".." / "qa.jsonl")])


def test_eval_zeroshot_writes_items_and_intervals(gallery, tmp_path, capsys, lite, monkeypatch) -> None:
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    labels = tmp_path / "labels.jsonl"
    names = ("cat", "coffee", "rocket", "astronaut", "motorcycle", "flower")
    labels.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "label": n}) + "\n" for n in names))
    out = tmp_path / "items.jsonl"
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--model", "lite", "--out", str(out),
                     "--ci"]) == 0
    result = json.loads(capsys.readouterr().out)
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert [i["label"] for i in items] == list(names) and {"predicted", "rank", "image"} <= set(items[0])
    assert result["top1"] == pytest.approx(np.mean([i["rank"] == 1 for i in items]), abs=1e-4)
    low, high = result["top1_ci95"]
    assert low <= result["top1"] <= high and result["top5_ci95"][1] <= 1.0


def test_strict_refuses_figures_on_part_of_the_data() -> None:
    from types import SimpleNamespace

    from polymodal.eval.per_item import check_strict

    strict, lax = SimpleNamespace(strict=True), SimpleNamespace(strict=False)
    check_strict(strict, 0, 0)
    check_strict(lax, 3, 2)
    with pytest.raises(PolymodalError, match="--strict: 3 skipped rows and 1 unreadable image"):
        check_strict(strict, 3, 1)
    with pytest.raises(PolymodalError, match="--strict: 2 unreadable images \\("):
        check_strict(strict, 0, 2)
