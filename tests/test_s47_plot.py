"""`polymodal plot` of a run with several objectives (pretraining): each objective's training loss gets a curve on a
panel of its own (they were in metrics.jsonl only), and no legend sits on the curves."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polymodal.train.plot import plot_run  # noqa: E402


def _plot(tmp_path, monkeypatch, rows):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_run(tmp_path)
    return figures[0]


def _pretraining_rows():
    rows = [{"step": s, "epoch": 1 + s // 4, "split": "train", "loss": 9.0 - s / 4, "lr": 1e-3,
             "itm/loss": 0.69 - s / 100, "itm/accuracy": 0.5, "mlm/loss": 8.5 - s / 3, "mrm/loss": 1.26 - s / 50} for s in range(1, 9)]
    rows += [{"step": 4 * e, "epoch": e, "split": "val", "train_loss": 9.0 - e, "val/itm_loss_hard": 0.6,
              "val/itm_accuracy_hard": 0.6, "val/mlm_loss": 7.0 - e, "val/score": -8.0 + e} for e in (1, 2)]
    return rows


def test_each_objectives_training_loss_has_a_curve(tmp_path, monkeypatch) -> None:
    fig = _plot(tmp_path, monkeypatch, _pretraining_rows())
    panel = fig.axes[3]
    curves = {line.get_label(): list(line.get_ydata()) for line in panel.get_lines()}
    assert sorted(curves) == ["itm", "mlm", "mrm"]  # losses only: not itm/accuracy
    assert curves["mlm"][0] == 8.5 - 1 / 3 and panel.get_yscale() == "log"


def test_no_legend_covers_a_panel(tmp_path, monkeypatch) -> None:
    fig = _plot(tmp_path, monkeypatch, _pretraining_rows())
    renderer = fig.canvas.get_renderer()
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 3  # loss, validation, per objective (the learning rate has one line, no legend)
    for ax, legend in legends:
        assert legend.get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0


def test_a_run_of_one_objective_keeps_three_panels(tmp_path, monkeypatch) -> None:
    rows = [{"step": 1, "epoch": 1, "split": "train", "loss": 2.0, "lr": 1e-3, "contrastive/loss": 2.0}]
    assert len(_plot(tmp_path, monkeypatch, rows).axes) == 3
