"""Short reprs for the models that are not torch modules."""


def test_reprs_of_models_that_are_not_torch_modules(lite, coco_yesno):
    """`model` in a notebook showed <ConSEModel object at 0x...> (torch models: test_s55_pyapi.py)."""
    assert repr(lite) == f"ConSEModel({lite.key}, dim=384)"
    assert repr(coco_yesno).startswith(f"YesNoModel({coco_yesno.key}, answers yes/no")
