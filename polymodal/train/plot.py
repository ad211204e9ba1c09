"""`polymodal plot RUN`: training curves (loss, learning rate, validation metrics) as one PNG, for every kind of run:
recall for contrastive runs, accuracy for VQA, CIDEr-D and BLEU-4 for captioners, ITM accuracy for pretraining;
validation losses go beside the training loss, and a run of several objectives gets a panel of each one's training
loss. Legends go below their panels: inside, they covered the curves."""

from __future__ import annotations

import io
import math
from pathlib import Path

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError
from polymodal.train.metrics import read_metrics

FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")  # what matplotlib's Agg writes


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    out = Path(out) if out else Path(run_dir) / "curves.png"
    if out.suffix.lower().lstrip(".") not in FORMATS:
        raise PolymodalError(f"cannot plot to {out}: the file name must end in one of .{', .'.join(FORMATS)} "
                             "(e.g. --out curves.png)")
    records = read_metrics(Path(run_dir))
    if not records:
        if (Path(run_dir) / "metrics.jsonl").is_file():
            raise PolymodalError(f"{Path(run_dir) / 'metrics.jsonl'} has no rows yet: the run has not logged a step")
        parent = Path(run_dir).resolve().parent
        if (parent / "metrics.jsonl").is_file():  # RUN/model, as --model takes it
            raise PolymodalError(f"{run_dir} is a run's model folder; its metrics are in the run folder: "
                                 f"polymodal plot {parent}")
        raise PolymodalError(f"no metrics.jsonl in {run_dir}; pass a folder written by `polymodal train`")
    try:
        import matplotlib
    except ImportError:
        raise PolymodalError("plotting needs matplotlib (the train extra): pip install 'polymodal[train]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    # pretraining (itm/loss, mlm/loss, ...): one curve each, unweighted, on a log axis (MLM's 8 beside ITM's 0.7)
    objectives = sorted({k for r in train for k, v in r.items() if k.endswith("/loss") and isinstance(v, (int, float))})
    fig, axes = plt.subplots(1, 4 if len(objectives) > 1 else 3, figsize=(20 if len(objectives) > 1 else 15, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (step)")
    axes[0].plot(*_series(val, "train_loss", "step"), "o-", label="train loss (epoch mean)")  # none before epoch 1
    keys = sorted({k for r in val for k, v in r.items() if k.startswith("val/") and isinstance(v, (int, float))})
    for key in (k for k in keys if "loss" in k and "neg_loss" not in k):  # val losses share the loss axis (neg_loss:
        # the captioner's loss negated for early stopping, the same curve upside down)
        axes[0].plot(*_series(val, key, "step"), "s--", label=key)
    if "val/score" in keys:  # pretraining's score is minus its weighted sum of losses: a loss, on the loss axis
        steps, score = _series(val, "val/score", "step")
        axes[0].plot(steps, [-v for v in score], "s-", label="val weighted loss (-val/score)")
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(xlabel="step", ylabel="learning rate", title="learning rate")
    # rsum: six recalls summed, another scale; score (pretraining): minus a loss sum, drawn on the loss panel above
    scores = [k for k in keys if "loss" not in k and k not in ("val/rsum", "val/score")]
    for key in sorted((k for k in scores if "median_rank" not in k), key=_natural):  # R@1, R@5, R@10
        axes[2].plot(*_series(val, key, "epoch"), "o-", label=key[4:])
    axes[2].set(xlabel="epoch", ylabel="score", title="validation")
    ranks = [k for k in scores if "median_rank" in k]
    handles, labels = axes[2].get_legend_handles_labels()
    if ranks:  # tens or hundreds: on the recalls' 0-1 axis they would flatten every recall curve
        right = axes[2].twinx()
        for key in ranks:
            right.plot(*_series(val, key, "epoch"), "x--", label=key[4:])
        right.set(ylabel="median rank (lower is better)", yscale="log")
        _plain_log_labels(right.yaxis)
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if len(objectives) > 1:
        for key in objectives:
            axes[3].plot(*_series(train, key, "step"), label=key.removesuffix("/loss"))
        axes[3].set(xlabel="step", ylabel="loss (unweighted)", yscale="log", title="training loss per objective")
        _plain_log_labels(axes[3].yaxis)
    # the validation panel's legend holds its median-rank axis's lines too
    legends = [(handles, labels) if ax is axes[2] else ax.get_legend_handles_labels() for ax in axes]
    for ax, (handles, labels) in zip(axes, legends):
        if handles:  # below each panel (inside, it covered curves: six recalls, five loss lines), clear of the x
            # label; two columns, so that pretraining's long names don't widen the figure and squeeze every panel
            ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # steps and epochs: a 2-epoch run read 1.2, 1.4
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix.lower().lstrip("."), dpi=100, bbox_inches="tight")  # keeps the legend below
    plt.close(fig)
    # a new folder is made, as --explain and train --out make theirs; an interrupted plot leaves the previous picture
    atomic_write_bytes(out, buffer.getvalue())
    return out


def curves_summary(run_dir: str | Path) -> dict:
    """What `plot --json` prints beside the picture's path: the metric that chose the run's epoch (train_config.json's
    early_stop_metric), the last epoch's record ("final"; before the first epoch ends, the last step's) and the best
    one's, chosen as the trainer chose RUN/model: the highest metric, the later of a tie (an epoch 0 scored before
    training included), or without that metric (no validation) the last epoch. An epoch scored NaN is never the
    best (the trainer's `score >= best` is false for it), and a NaN or inf figure is written null: JSON has no NaN."""
    from polymodal.train.run_settings import recorded_settings

    records = read_metrics(Path(run_dir))
    val = [r for r in records if r.get("split") == "val"]
    settings = recorded_settings(Path(run_dir))
    train = settings.get("train") if isinstance(settings, dict) else None
    metric = train.get("early_stop_metric") if isinstance(train, dict) else None
    scored = [r for r in val if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    validated = any(metric in r for r in val)  # else no validation: the trainer kept the last epoch
    best = (max(reversed(scored), key=lambda r: r[metric]) if scored  # max: the first
            else None if validated or not val else val[-1])  # every score NaN: no epoch was kept
    final = val[-1] if val else (records[-1] if records else None)
    return {"metric": metric, "final": _json_safe(final), "best": _json_safe(best)}


def _json_safe(record: dict | None) -> dict | None:
    """A metrics record with its NaN and inf figures as None: metrics.jsonl holds them as Python writes them (NaN),
    which strict JSON parsers (JavaScript's, jq's, Go's) refuse."""
    if record is None:
        return None
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _plain_log_labels(axis) -> None:
    """A log axis labelled 0.5, 1, 2, 5, 10, 20 ..., not 5x10^-1."""
    from matplotlib import ticker

    axis.set_minor_locator(ticker.LogLocator(subs=(2, 5)))
    for set_format in (axis.set_major_formatter, axis.set_minor_formatter):
        set_format(ticker.FormatStrFormatter("%g"))


def _natural(key: str) -> list:
    """"val/t2i_R@10" after "val/t2i_R@5": numbers compare as numbers."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _series(records: list[dict], key: str, x: str) -> tuple[list, list]:
    """(x, value) of the records that have `key` (a metric may start later, or be logged only some epochs)."""
    rows = [r for r in records if key in r]
    return [r[x] for r in rows], [r[key] for r in rows]
