"""`polymodal plot RUN`: training curves (loss, learning rate, validation recall) as one PNG."""

from __future__ import annotations

from pathlib import Path

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
        raise PolymodalError(f"no metrics.jsonl in {run_dir}; pass a folder written by `polymodal train`")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (step)")
    axes[0].plot([r["step"] for r in val], [r["train_loss"] for r in val], "o-", label="train loss (epoch mean)")
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set(xlabel="step", ylabel="learning rate", title="learning rate")
    for key in sorted({k for r in val for k in r if k.startswith("val/") and "R@" in k}):
        axes[2].plot([r["epoch"] for r in val], [r[key] for r in val], "o-", label=key[4:])
    axes[2].set(xlabel="epoch", ylabel="recall", title="validation retrieval")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
