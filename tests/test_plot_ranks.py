"""`polymodal plot`: median ranks (tens, hundreds) get their own axis, so the recalls (0-1) keep their shape."""

import json

import matplotlib

# Agg before plot_run's own matplotlib.use("Agg"): matplotlib < 3.10 switching from the unresolved default calls
# plt.close("all"), which the patched close below would take for the figure (this file run alone, matplotlib 3.8.4)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polymodal.train.plot import _natural, plot_run  # noqa: E402


def test_median_rank_is_on_its_own_log_axis_and_recalls_sort_naturally(tmp_path, monkeypatch) -> None:
    rows = [{"split": "train", "step": 1, "epoch": 1, "loss": 2.0, "lr": 1e-3}]
    for epoch in (1, 2, 3):
        rows.append({"split": "val", "step": epoch, "epoch": epoch, "val/t2i_R@1": 0.1 * epoch,
                     "val/t2i_R@10": 0.3 * epoch, "val/t2i_R@5": 0.2 * epoch, "val/t2i_median_rank": 80 / epoch})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    plot_run(tmp_path)
    validation = figures[0].axes[2]
    assert [line.get_label() for line in validation.lines] == ["t2i_R@1", "t2i_R@5", "t2i_R@10"]
    assert validation.get_ylim()[1] < 1.5  # the recalls' axis is not stretched by ranks of 80
    twin = [ax for ax in figures[0].axes if ax.get_ylabel().startswith("median rank")]
    assert len(twin) == 1 and twin[0].get_yscale() == "log" and twin[0].lines[0].get_label() == "t2i_median_rank"
    # one legend for both axes, below the panel: inside it, it covered the curves (a helper's plot, stop 34)
    legend = validation.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["t2i_R@1", "t2i_R@5", "t2i_R@10", "t2i_median_rank"]
    renderer = figures[0].canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 < validation.get_window_extent(renderer).y0
    assert twin[0].get_legend() is None
    monkeypatch.undo()
    plt.close(figures[0])


def test_natural_order() -> None:
    assert sorted(["R@10", "R@5", "R@1"], key=_natural) == ["R@1", "R@5", "R@10"]
