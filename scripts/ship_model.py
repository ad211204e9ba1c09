"""Copy a trained model folder into the package as a built-in, with float16 weights (half the size).

    python scripts/ship_model.py runs/default/model default
The loader casts the weights back to float32; the version becomes the hash of the shipped weights file.
"""

import hashlib
import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save

from polymodal.cache import atomic_write_bytes
from polymodal.training_photos import FILE_NAME as TRAINING_PHOTOS

HERE = Path(__file__).resolve().parents[1] / "polymodal" / "resources" / "models"


def main(src: str, name: str) -> int:
    src_dir, dst = Path(src), HERE / name
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src_dir / "model.safetensors")).items()}
    data = save(state)
    config = json.loads((src_dir / "config.json").read_text())
    config["version"] = hashlib.sha256(data).hexdigest()[:12]
    config["name"] = name
    atomic_write_bytes(dst / "model.safetensors", data)
    atomic_write_bytes(dst / "config.json", json.dumps(config, indent=2).encode())
    if (src_dir / TRAINING_PHOTOS).is_file():  # the photos it trained on travel with it: `eval` warns when it scores
        # them (not its trained_with.json: a built-in's data paths would be this machine's)
        atomic_write_bytes(dst / TRAINING_PHOTOS, (src_dir / TRAINING_PHOTOS).read_bytes())
    print(f"shipped {src_dir} as {name!r}: {dst} ({len(data) / 1e6:.1f} MB, version {config['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
