"""Stop 51, a researcher's notebook (nbclient runs of the README's Python snippets, /work/lab-s51/notebook): the top
few of a hit list (`hits[:3]`) lost their thumbnails; an unreadable photo's error came chained to itself (the same
message twice in the cell's traceback); an update stopped with the kernel's Stop button said nothing of what it had
kept; and without ipywidgets the text progress bar redrew every 30 s, so a cell sat at 0% throughout."""

import shutil
import sys

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import polymodal.index.store as store
from polymodal.data.images import load_image
from polymodal.errors import PolymodalError
from polymodal.index import Hit, ImageIndex
from polymodal.index.hits_view import Hits
from polymodal.progress import progress_bar


def test_the_top_few_of_a_hit_list_still_show_as_thumbnails(tmp_path):
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    hits = Hits(Hit(str(photo), 0.9 - i / 10, id=i) for i in range(5))
    top = hits[:2]
    assert isinstance(top, Hits) and top == list(hits)[:2]
    assert top._repr_html_().startswith("<div><p>2 hits</p>") and top._repr_html_().count("<figure") == 2
    assert type(hits[0]) is Hit and isinstance(hits[::-1], Hits)


def test_an_unreadable_photo_raises_one_error_not_the_same_error_chained_to_itself(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(PolymodalError, match="not a readable image") as caught:
        load_image(str(broken))
    assert isinstance(caught.value.__cause__, UnidentifiedImageError)  # Pillow's reason, once
    nan_tiff = tmp_path / "nan.tif"
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(nan_tiff)
    with pytest.raises(PolymodalError, match="nan.tif: the image array holds 64 NaN") as caught:
        load_image(str(nan_tiff))
    assert not isinstance(caught.value.__cause__, PolymodalError)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes (add_note) came in Python 3.11")
def test_an_interrupted_update_says_how_much_it_saved(lite, gallery, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(gallery.glob("*.jpg"))[:4]:
        shutil.copy(p, photos / p.name)
    real, calls = store._embed, []

    def stopped_on_the_second_batch(model, paths):
        calls.append(paths)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kernel's interrupt, mid-update
        return real(model, paths)

    monkeypatch.setattr(store, "_embed", stopped_on_the_second_batch)
    index = ImageIndex(tmp_path / "db")
    with pytest.raises(KeyboardInterrupt) as caught:
        index.update(photos, lite, progress=False, batch_size=2, commit_every_s=0)
    assert caught.value.__notes__ == [f"index {index.db}: 2 of 4 images to embed were saved; the same update again "
                                      "embeds the rest"]
    assert len(index) == 2
    monkeypatch.setattr(store, "_embed", real)
    assert index.update(photos, lite, progress=False).added == 2


class _KernelStream:
    """What a Jupyter kernel's sys.stderr is: no terminal, but the notebook redraws a line on each carriage return."""

    __module__ = "ipykernel.iostream"

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def test_a_text_bar_in_a_kernel_without_widgets_redraws_live():
    stream = _KernelStream()
    bar = progress_bar(range(50), desc="embedding", file=stream, mininterval=0, miniters=1)
    assert bar.mininterval < 30
    for _ in bar:
        pass
    assert sum(part.count("\r") for part in stream.parts) > 10
