"""A read of stop 50's own change (stop 50): --resume reading checkpoints with weights_only. A checkpoint names
numpy's functions by the module of the numpy that wrote it (numpy.core under 1.x, numpy._core under 2.x, both
allowed by pyproject). Seconds on a CPU, with a tiny trainer."""

import io
import zipfile

import numpy as np

from polymodal.train.trainer import read_checkpoint
from test_trainer_loop import _trainer

CORE = {b"numpy._core.multiarray": b"numpy.core.multiarray", b"numpy.core.multiarray": b"numpy._core.multiarray"}


def _as_other_numpy_wrote_it(path) -> None:
    """Rewrite a checkpoint's pickle as the other major numpy names its functions (a run trained before a numpy
    upgrade, or on a machine with the other numpy)."""
    with zipfile.ZipFile(path) as src:
        records = [(info, src.read(info)) for info in src.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info, data in records:
            if info.filename.endswith("/data.pkl"):
                (name,) = [n for n in CORE if n in data]  # (one of them: this numpy's)
                data = data.replace(name, CORE[name])
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())


def test_a_run_checkpointed_under_the_other_major_numpy_resumes(tmp_path):
    def eval_fn(model):
        return {"val/rsum": np.float64(1.0)}  # a numpy scalar, besides the RNG state's array

    _trainer(tmp_path, eval_fn=eval_fn, epochs=2).fit()
    _as_other_numpy_wrote_it(tmp_path / "checkpoint.pt")
    state = read_checkpoint(tmp_path / "checkpoint.pt")  # was: "holds Python objects a checkpoint does not"
    assert state["numpy_rng"][0] == "MT19937" and state["best_metrics"]["val/rsum"] == 1.0
    resumed = _trainer(tmp_path, eval_fn=eval_fn, epochs=3)
    resumed.fit(resume=True)
    assert resumed.epoch == 3
