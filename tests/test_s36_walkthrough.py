"""What a new user's walkthrough found (stop 36): 0-1 float pixels a little past 1, and what the CLI says when an
--overwrite run is stopped (see test_s36_train_review)."""

import logging

import numpy as np
import pytest

from polymodal.data.images import load_image
from polymodal.errors import PolymodalError
from tests import test_pretrain, test_vqa
from tests.test_finetune_walkthrough import _run
from tests.test_vqa_pretrain_walkthrough import PRETRAIN, VQA

qa_file, pairs_file = test_vqa.qa_file, test_pretrain.pairs_file  # their tiny data sets over the sample gallery


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((40, 60, 3)).astype(np.float32)  # 0-1 pixels


def test_float_pixels_slightly_past_1_are_clipped_not_read_as_0_255(photo):
    nudged = photo.copy()
    nudged[0, 0, 0] = 1.005  # resampling's rounding: one pixel a hair over 1 made the whole image black before
    got = np.asarray(load_image(nudged))
    assert np.array_equal(got, np.asarray(load_image(np.clip(nudged, 0, 1))))
    assert got.mean() > 100  # the photo, not a black image


@pytest.mark.parametrize("scale", [1.05, 1.5])
def test_float_pixels_past_1_are_one_error(photo, scale):
    with pytest.raises(PolymodalError) as refused:
        load_image(photo * scale)
    assert "float values go up to" in str(refused.value) and "np.clip(x, 0, 1)" in str(refused.value)


def test_0_255_floats_and_0_1_floats_still_read_as_before(photo):
    assert np.array_equal(np.asarray(load_image(photo * 255)), np.asarray(load_image(photo)))
    dark = np.full((8, 8, 3), 0.0, np.float32)
    dark[0, 0] = 3.0  # a nearly black 0-255 image (max of 2 or more) stays 0-255
    assert np.asarray(load_image(dark)).max() == 3


def test_a_resized_0_1_image_that_dips_below_0_is_told_to_clip(photo):
    with pytest.raises(PolymodalError, match=r"clip them \(np.clip\(x, 0, 1\)"):
        load_image(photo - 0.2)



def test_the_readme_pretrain_then_fine_tune_commands_run_without_the_drift_warning(qa_file, pairs_file, tmp_path,
                                                                                   caplog):
    """The README's example froze the fusion only, so every run warned that the pretrained ITM head drifts."""
    assert _run(["train", "pretrain", "--pairs", pairs_file, "--out", tmp_path / "pt", "--epochs", "1",
                 "--val-pairs", pairs_file, *PRETRAIN]) == 0
    with caplog.at_level(logging.WARNING):
        assert _run(["train", "vqa", "--qa", qa_file, "--model", tmp_path / "pt" / "model", "--freeze", "fusion",
                     "--itm-weight", "0.5", "--out", tmp_path / "ft", "--epochs", "1",
                     *[a for a in VQA if a not in ("--dim", "32")]]) == 0
    assert "drift" not in caplog.text


def test_a_model_name_where_a_loaded_model_goes_says_to_load_it(gallery, tmp_path):
    from polymodal.index import ImageIndex

    with pytest.raises(PolymodalError, match=r"got the model name 'lite' where a loaded model goes; pass "
                                             r"polymodal.load\('lite'\)"):
        ImageIndex(tmp_path / "db").update(gallery, "lite", progress=False)
    assert not (tmp_path / "db").exists()


def test_plot_into_a_new_folder_makes_it(tmp_path):
    pytest.importorskip("matplotlib")
    import json

    from polymodal import cli

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "split": "train", "loss": 1.0, "lr": 0.1},
            {"step": 2, "epoch": 1, "split": "val", "train_loss": 0.9, "val/accuracy": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "figures" / "curves.png"
    assert cli.main(["plot", str(run), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in out.parent.iterdir()] == ["curves.png"]


def test_the_captioners_negated_loss_is_not_drawn_on_the_loss_axis(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import json

    import matplotlib.pyplot as plt

    from polymodal.train.plot import plot_run

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "split": "train", "loss": 2.0, "lr": 0.1},
            {"step": 2, "epoch": 1, "split": "val", "train_loss": 1.9, "val/loss": 1.8, "val/neg_loss": -1.8,
             "val/cider": 0.2}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_run(run)
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    monkeypatch.undo()
    plt.close(figures[0])
    assert "val/loss" in labels and "val/neg_loss" not in labels


def test_an_index_skip_line_names_the_file_once(tmp_path, capsys, monkeypatch):
    import polymodal
    from polymodal import cli
    from test_index import FakeModel, paint

    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: FakeModel())
    paint(tmp_path / "pics" / "red.png", "red")
    (tmp_path / "pics" / "broken.jpg").write_bytes(b"x")
    assert cli.main(["index", str(tmp_path / "pics"), "--db", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "skipped " in line and "broken" in line)
    assert line.count("broken.jpg") == 1 and "not a readable image (" in line, line
    assert "; 1 image, model fake@1" in out  # not "1 images"
