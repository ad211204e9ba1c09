"""Review of stop 54's rerun and evalfix commits (helper diffreviewC): `plot --json` over a run with a NaN validation
score (the trainer never keeps such an epoch; JSON has no NaN), and zero-shot CSVs saved by Excel where the decimal
mark is a comma (semicolon-separated, or with its "sep=;" first line)."""

import json

import pytest

from polymodal import cli
from polymodal.data.csv_rows import csv_label_rows, csv_names
from polymodal.errors import PolymodalError

pytest.importorskip("matplotlib")


def _run(folder, scores):
    folder.mkdir()
    (folder / "train_config.json").write_text(json.dumps({"out": str(folder),
                                                          "train": {"early_stop_metric": "val/rsum"}}))
    records = [{"step": 1, "epoch": 1, "split": "train", "loss": 2.0, "lr": 0.001}]
    records += [{"step": e, "epoch": e, "split": "val", "train_loss": 2.0 - e / 10, "val/rsum": s, "val/loss": s}
                for e, s in enumerate(scores, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _strict(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_plot_json_skips_a_nan_epoch_and_writes_strict_json(tmp_path, capsys):
    """An epoch scored NaN last was printed as the best (max() keeps a NaN met first) though the trainer kept
    epoch 2, and its NaN made the line invalid JSON for strict parsers."""
    run = _run(tmp_path / "run", [30.0, 50.0, float("nan")])
    assert cli.main(["plot", str(run), "--json"]) == 0
    out = _strict(capsys.readouterr().out)
    assert out["best"]["epoch"] == 2 and out["best"]["val/rsum"] == 50.0
    assert out["final"]["epoch"] == 3 and out["final"]["val/rsum"] is None and out["final"]["val/loss"] is None


def test_plot_json_every_score_nan_has_no_best(tmp_path, capsys):
    """Validation ran but scored NaN each epoch: no epoch was kept, so no best (it was the last epoch)."""
    run = _run(tmp_path / "run", [float("nan"), float("inf")])
    assert cli.main(["plot", str(run), "--json"]) == 0
    out = _strict(capsys.readouterr().out)
    assert out["best"] is None and out["final"]["epoch"] == 2


@pytest.mark.parametrize("text", ["image;label\nimgs/cat.jpg;cat\nimgs/moon.jpg;moon\n",
                                  "sep=;\nimage;label\nimgs/cat.jpg;cat\nimgs/moon.jpg;moon\n"])
def test_labelled_photos_in_a_semicolon_csv(tmp_path, text):
    """Excel in a decimal-comma locale separates cells with ";": such a file was refused as having one column
    'image;label' (the pairs CSVs take "sep=;")."""
    path = tmp_path / "rows.csv"
    path.write_text(text)
    rows = [row for _, row, _ in csv_label_rows(path, ("image",), ("label",), "fix")]
    assert rows == [{"image": "imgs/cat.jpg", "label": "cat"}, {"image": "imgs/moon.jpg", "label": "moon"}]


def test_label_names_in_a_semicolon_csv(tmp_path):
    """`classify --labels-from` / `--classes` over a semicolon CSV ranked "label;description" and "cat;a small cat"
    as classes; now its columns are seen: the header is no class, and the other column is refused as with commas."""
    path = tmp_path / "names.csv"
    path.write_text("label;description\ncat;a small cat\nmoon;the moon\n")
    with pytest.raises(PolymodalError, match="other columns \\(description\\)"):
        csv_names(path, "label")
    path.write_text("sep=;\nlabel\ncat\nmoon, full\n")
    assert csv_names(path, "label") == ["cat", "moon, full"]


def test_empty_cells_at_a_rows_end_are_no_column(tmp_path):
    """Excel saves a sheet with a blank column beside the names as "cat;": such a file was refused with "its other
    columns () would be ignored"."""
    path = tmp_path / "names.csv"
    path.write_text("label;\ncat;\nmoon;\n")
    assert csv_names(path, "label") == ["cat", "moon"]
    path.write_text("cat,,\ndog,\n")
    assert csv_names(path, "label") == ["cat", "dog"]
