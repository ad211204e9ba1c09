"""Which `default` a yes/no model was fit over, checked without torch: load_yesno refuses a folder fit over another
one, and `polymodal info --model` says so as quickly."""

from __future__ import annotations

from pathlib import Path

from polymodal.errors import PolymodalError

# coco-yesno's versions shipped before 8d6f58b, whose saved copies record no "base_version" -> the `default` each was
# fit over: 6e81bec85cee before that default's retraining (69b841c), 9d1379a30248 over today's (so copies saved from
# it are refused too once `default` is re-shipped again)
FIT_BEFORE_BASE_VERSION = {"6e81bec85cee": "3add725d407c", "9d1379a30248": "542b67f56d7a"}


def check_fit_base(folder: Path, config: dict, version: str, base) -> None:
    """The pool statistics and weights hold the base's spaces as they were when the model was fit, but the base loads
    by name: after an upgrade that re-shipped it, a saved model answered from spaces it was not fit on, under its
    same key (a copy of coco-yesno saved before `default` was retrained: 22 of 200 answers changed). Refused."""
    fit_on = config.get("base_version") or FIT_BEFORE_BASE_VERSION.get(version)
    name = str(config.get("base", "default"))
    if base is not None:
        now = getattr(base, "version", None)
    else:
        from polymodal.registry import shipped_version

        now = shipped_version(name)  # None: no such built-in, which loading the base says
    if fit_on is None or now is None or str(fit_on) == str(now):
        return
    raise PolymodalError(f"{folder} is a yes/no model fit over another {name} (version {fit_on}; this polymodal's is "
                         f"{now}), so its answers would be wrong; save the built-in again "
                         "(`polymodal.load('coco-yesno').save(FOLDER)`) or fit yours again "
                         "(polymodal.models.yesno.train_yesno)")
