"""classify() / label_embeddings() with an empty template list: refused, not silently the default template."""

import pytest

from polymodal.errors import PolymodalError


def test_an_empty_template_list_is_refused(lite, gallery):
    with pytest.raises(PolymodalError, match=r"templates is empty; pass templates=None for the model's default"):
        lite.classify([str(gallery / "cat.jpg")], ["cat", "dog"], templates=[])
    with pytest.raises(PolymodalError, match="templates is empty"):
        lite.label_embeddings(["cat"], templates=())
    assert lite.classify([str(gallery / "cat.jpg")], ["cat", "dog"], templates=None)[0][0][0] == "cat"
