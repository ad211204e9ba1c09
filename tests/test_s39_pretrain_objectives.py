"""An objective named twice in --objectives is refused, not silently trained at the last weight."""

import pytest

from polymodal.errors import PolymodalError
from polymodal.train.pretrain import parse_objectives


@pytest.mark.parametrize("spec", ["itm:1,itm:2", "itm,mlm,itm:0.5", ["mlm", "mlm"]])
def test_an_objective_given_twice_is_refused(spec):
    with pytest.raises(PolymodalError, match="given twice"):
        parse_objectives(spec)


def test_each_objective_once_still_parses():
    assert parse_objectives("itm:1, mlm , mrm:0.5") == {"itm": 1.0, "mlm": 1.0, "mrm": 0.5}
