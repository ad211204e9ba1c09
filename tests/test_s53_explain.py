"""Heat maps (helper explain, stop 53): what users hit saving them."""

import numpy as np
import pytest
from PIL import Image

from polymodal.apps.explain import save_heatmap


@pytest.mark.parametrize("suffix, longest", [(".webp", 16383), (".jpg", 65500)])
def test_a_panoramas_heat_map_past_the_formats_limit_is_shrunk_to_fit(tmp_path, suffix, longest):
    # a 20000-pixel-wide panorama's map as .webp was a traceback (WebP's limit), a 70000-pixel one as .jpg "broken
    # data stream ... check the free space": after the model's passes, and nothing written
    wide = np.full((8, longest + 100, 3), 120, np.uint8)
    out = save_heatmap(wide, np.eye(7, dtype=np.float32), tmp_path / f"heat{suffix}", transform=None, legend=False)
    width, height = Image.open(out).size
    assert width == longest and height in (7, 8)  # the aspect ratio kept
