"""`polymodal plot` of a pretraining run: val/score (minus the weighted sum of validation losses, about -9) is not
drawn on the validation panel beside the 0-1 accuracies (it squeezed them into a flat line); it goes on the loss
panel, negated."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polymodal.train.plot import plot_run  # noqa: E402


def test_pretraining_score_is_plotted_as_a_loss(tmp_path, monkeypatch):
    rows = [{"step": 2 * e, "epoch": e, "split": "train", "loss": 9.0 - e, "lr": 1e-3} for e in (1, 2)]
    rows += [{"step": 2 * e, "epoch": e, "split": "val", "train_loss": 9.0 - e, "val/itm_loss_hard": 0.6,
              "val/itm_accuracy_hard": 0.6 + 0.1 * e, "val/mlm_loss": 7.0, "val/mlm_accuracy": 0.1 * e,
              "val/score": -8.0 + e} for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    plot_run(tmp_path)
    loss_ax, _, val_ax = figures[0].axes[:3]
    val_lines = {line.get_label(): list(line.get_ydata()) for line in val_ax.get_lines()}
    assert "score" not in val_lines and {"itm_accuracy_hard", "mlm_accuracy"} <= set(val_lines)
    assert min(min(v) for v in val_lines.values()) >= 0  # the accuracies keep their 0-1 axis
    loss_lines = {line.get_label(): list(line.get_ydata()) for line in loss_ax.get_lines()}
    assert loss_lines["val weighted loss (-val/score)"] == [7.0, 6.0]
