"""Stop 51: search results in a notebook. `index.search_text(model, "a dog")` showed a wall of Hit reprs in Jupyter;
a researcher would rather see the photos. A Hits list renders as thumbnails with names and scores
(`_repr_html_`), says why a photo has none, escapes file names, and stays a plain list everywhere else."""

import base64
import io
import json
import pickle
import re

import numpy as np
from PIL import Image

from polymodal.index import Hit, ImageIndex
from polymodal.index.hits_view import SHOWN, Hits


def test_search_results_render_as_thumbnails_with_names_and_scores(lite, gallery, tmp_path):
    index = ImageIndex(tmp_path / "db")
    index.update(gallery, lite)
    hits = index.search_text(lite, "a cup of coffee", k=3)
    assert isinstance(hits, Hits) and isinstance(index.search(lite.encode_text(["a dog"]), 2)[0], Hits)
    page = hits._repr_html_()
    images = re.findall(r"src='data:image/jpeg;base64,([^']+)'", page)
    assert len(images) == 3
    first = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert max(first.size) == 128
    assert hits[0].path.rsplit("/", 1)[-1] in page and f"{hits[0].score:.3f}" in page
    assert page.startswith("<div><p>3 hits</p>")


def test_a_missing_file_and_a_hostile_name_are_said_not_rendered(tmp_path):
    photo = tmp_path / "<script>alert(1)<script>.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photo)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    hits = Hits([Hit(str(photo), 0.5, id=1), Hit(str(tmp_path / "gone.jpg"), 0.25, id=2), Hit(str(broken), 0.1)])
    page = hits._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;alert(1)" in page
    assert "file not found here" in page and "unreadable (UnidentifiedImageError)" in page
    assert page.count("data:image/jpeg;base64,") == 1


def test_a_long_list_shows_its_first_photos_and_stays_a_list(gallery, tmp_path):
    photo = next(p for p in sorted(gallery.iterdir()) if p.suffix == ".jpg")
    hits = Hits(Hit(str(photo), 1.0 - i / 100, id=i) for i in range(SHOWN + 5))
    page = hits._repr_html_()
    assert f"{SHOWN + 5} hits, the first {SHOWN} shown" in page and page.count("<figure") == SHOWN
    assert hits == list(hits) and pickle.loads(pickle.dumps(hits)) == hits
    assert json.loads(json.dumps([h.path for h in hits[:2]])) == [str(photo)] * 2
