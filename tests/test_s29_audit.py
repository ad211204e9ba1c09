"""Mutation audit of s29's changes (commits 7b04a4e and 1691768): each test kills a mutation the earlier tests let
survive. Index: a search never waits for another write-back, and a writer's own searches use its committed vectors
while it saves; CLIP: processor settings that are no dict, the warning default, the version following
processor_config.json; pixels: -inf and empty arrays; inputs, choices, logit scale and temperature types; fusion
dtypes; the epoch bar closed on any error."""

from __future__ import annotations

import io
import json
import logging
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

import polymodal.losses.contrastive as contrastive
from polymodal.data.answers import check_row_choices
from polymodal.data.images import load_image
from polymodal.errors import PolymodalError
from polymodal.fusion import build_fusion
from polymodal.fusion.base import FusionModule
from polymodal.index import ImageIndex
from polymodal.losses import ClipLoss, LearnableTemperature, contrastive_loss
from polymodal.models.clip import OPENAI_CLIP_TRANSFORM, transform_from_preprocessor
from polymodal.models.inputs import as_images
from polymodal.progress import progress_bar
from test_index import FakeModel, paint

COLOURS = ("red", "green", "blue", "yellow")


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    return [paint(tmp_path / "photos" / f"{c}.png", c) for c in COLOURS]


@pytest.fixture
def built(tmp_path: Path, photos: list[Path]) -> ImageIndex:
    index = ImageIndex(tmp_path / "db")
    index.update(tmp_path / "photos", FakeModel(), progress=False)
    return index


# -- index ---------------------------------------------------------------------------------------------------------


def test_a_search_does_not_wait_for_another_write_back(built) -> None:
    """A reader that rebuilt its cache skips the write-back at once while vectors.lock is held (timeout=0): a search
    never blocks for SAVE_WAIT_S behind another save."""
    built.faiss_path.unlink()
    reader, done = ImageIndex(built.db), threading.Event()
    searcher = threading.Thread(target=lambda: (reader.search_text(FakeModel(), "red", k=1), done.set()))
    with FileLock(str(built.vectors_lock_path)):
        searcher.start()
        finished = done.wait(5)
        written = built.faiss_path.exists()
    searcher.join(70)
    assert finished and not written


def test_a_writers_own_searches_use_its_committed_vectors_while_it_saves(built, photos, monkeypatch) -> None:
    """add() and remove() set the cache before writing vectors.faiss (which may wait for a reader's write-back): a
    search of the same object meanwhile sees the committed change without rebuilding from the BLOBs."""
    loads, seen, rebuilt = [], [], []
    real_load, real_save = built._load_vectors, built._save_vectors
    monkeypatch.setattr(built, "_load_vectors", lambda *a: loads.append(1) or real_load(*a))

    def save(index):  # what another thread's search gets while the writer waits for vectors.lock
        before = len(loads)  # the writer itself loads the vectors it changes; the search must not load again
        seen.append({Path(h.path).name for h in built.search_text(FakeModel(), "red", k=len(COLOURS))})
        rebuilt.append(len(loads) - before)
        real_save(index)

    monkeypatch.setattr(built, "_save_vectors", save)
    assert built.remove(photos[:1]) == 1
    built.add(photos[:1], FakeModel(), progress=False)
    assert "red.png" not in seen[0] and "red.png" in seen[1]
    assert rebuilt == [0, 0]


# -- CLIP processor settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["[]", '{"image_processor": "CLIPImageProcessor"}'])
def test_processor_config_without_a_settings_dict_falls_to_preprocessor_config(tmp_path, content):
    """A processor_config.json with no settings dict (not a dict, or "image_processor" no dict) is passed over for
    preprocessor_config.json, never a raw AttributeError."""
    (tmp_path / "processor_config.json").write_text(content)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 40}}))
    assert transform_from_preprocessor(tmp_path).resize == 40


def test_transform_from_preprocessor_warns_by_default(tmp_path, caplog):
    """Called directly on a folder without settings, the fallback to OpenAI's preprocessing is a warning."""
    with caplog.at_level(logging.INFO, logger="polymodal.models.clip"):
        assert transform_from_preprocessor(tmp_path) == OPENAI_CLIP_TRANSFORM
    assert [r.levelno for r in caplog.records if "image processor settings" in r.message] == [logging.WARNING]


def test_changed_nested_processor_settings_are_another_model_version(tmp_path):
    """transformers 5's layout (settings only in processor_config.json): changing them changes the model version,
    so an index or feature cache made with the old preprocessing is not reused."""
    import polymodal
    from test_clip_checkpoints import make_tiny_clip

    folder = make_tiny_clip(tmp_path / "clip")
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").unlink()

    def write(mean):
        settings["image_mean"] = mean
        (folder / "processor_config.json").write_text(json.dumps({"image_processor": settings}))

    write([0.4, 0.4, 0.4])
    before = polymodal.load(str(folder))
    write([0.5, 0.5, 0.5])
    after = polymodal.load(str(folder))
    assert before.transform.mean != after.transform.mean and before.version != after.version


# -- pixels and inputs ---------------------------------------------------------------------------------------------


def test_an_infinite_pixel_is_named_as_such_not_as_normalised():
    """-inf is no sign of normalisation: the non-finite values get their own message."""
    x = np.full((8, 8, 3), 0.5, np.float32)
    x[0, 0, 0] = -np.inf
    with pytest.raises(PolymodalError, match="NaN or infinite values"):
        load_image(x)


def test_an_empty_float_array_is_one_polymodal_error():
    """An empty float array reaches the size check (PolymodalError), not a raw ValueError from arr.min()."""
    with pytest.raises(PolymodalError, match="both sides at least 1 pixel"):
        OPENAI_CLIP_TRANSFORM([np.zeros((0, 5, 3), np.float32)])


def test_a_memoryview_becomes_bytes():
    """as_images copies a memoryview into bytes: a plain item that pickles (to data-loader workers) and outlives
    the buffer."""
    items = as_images(memoryview(b"\x89PNG not really"))
    assert len(items) == 1 and type(items[0]) is bytes and pickle.loads(pickle.dumps(items)) == items


def test_an_empty_choice_list_is_not_broadcast():
    """[] is no flat list every row shares: it is the count error, and no empty candidate list reaches the model."""
    checked = []
    with pytest.raises(PolymodalError, match="got 0 lists of choices for 2 rows"):
        check_row_choices([], 2, checked.append)
    assert checked == []


# -- losses --------------------------------------------------------------------------------------------------------


def _pairs(n=4, d=8):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    return img, torch.nn.functional.normalize(img + 0.1 * torch.randn(n, d, generator=g), dim=1)


def test_an_empty_tensor_or_a_bool_logit_scale_is_refused():
    """An empty tensor is not one number, and True is no scale (it would silently be 1)."""
    with pytest.raises(PolymodalError, match=r"one number, got a tensor of shape \(0,\)"):
        contrastive_loss(*_pairs(), torch.tensor([]))
    with pytest.raises(PolymodalError, match="number or a scalar tensor, got bool"):
        contrastive_loss(*_pairs(), True)


def test_a_numpy_logit_scale_is_a_number():
    """np.float32 (from a config or an array) is a Real: accepted, and the same loss as the Python float."""
    want = contrastive_loss(*_pairs(), 14.25).loss
    torch.testing.assert_close(contrastive_loss(*_pairs(), np.float32(14.25)).loss, want)


def test_a_logit_scale_below_one_warns(caplog, monkeypatch):
    """The warning threshold is 1 (LearnableTemperature never goes below it): 0.5 looks like a temperature."""
    monkeypatch.setattr(contrastive, "_warned_of_small_scale", False)
    with caplog.at_level(logging.WARNING, logger="polymodal.losses.contrastive"):
        contrastive_loss(*_pairs(), 0.5)
    assert "looks like a temperature" in caplog.text


def test_temperature_takes_numpy_and_int_numbers_but_not_a_bool():
    """Any Real but bool: np.float32(0.07) and 1 are temperatures; ClipLoss(True) (meant as learnable?) is refused."""
    assert float(LearnableTemperature(np.float32(0.07))().detach()) == pytest.approx(1 / 0.07, rel=1e-4)
    assert float(LearnableTemperature(1)().detach()) == pytest.approx(1.0)
    with pytest.raises(PolymodalError, match=r"temperature must be a number such as 0.07, got True \(bool\)"):
        ClipLoss(temperature=True)


# -- fusion --------------------------------------------------------------------------------------------------------


def test_fusion_refuses_complex_inputs():
    """Complex features are not cast to real (dropping the imaginary part): one error naming the dtype."""
    fusion = build_fusion("concat", dims=(4, 4), out_dim=4)
    with pytest.raises(PolymodalError, match="modality 1 is torch.complex64"):
        fusion([torch.randn(2, 4), torch.randn(2, 4, dtype=torch.complex64)])


def test_integer_features_take_the_weights_dtype_not_float32():
    """Integers become the module's own dtype: a float64 module takes them too."""
    fusion = build_fusion("concat", dims=(4, 4), out_dim=4).double()
    ints = [torch.randint(0, 5, (2, 4)), torch.randint(0, 5, (2, 4))]
    assert fusion(ints).pooled.dtype == torch.float64


def test_a_fusion_without_parameters_takes_any_dtype():
    """A registered user fusion may have no weights (a mean): prepare() then leaves the dtype alone."""

    class Mean(FusionModule):
        name = "s29_mean"

    tokens, _ = Mean(dims=[4, 4], out_dim=4).prepare([torch.randn(2, 4), torch.randint(0, 3, (2, 4))])
    assert [t.dtype for t in tokens] == [torch.float32, torch.int64]


# -- training ------------------------------------------------------------------------------------------------------


def test_an_epoch_stopped_by_a_nan_loss_closes_its_bar(tmp_path, monkeypatch):
    """Any error in a step closes the epoch's bar (here the trainer's own NaN-loss PolymodalError), not only
    KeyboardInterrupt."""
    from torch.utils.data import DataLoader, TensorDataset

    import polymodal.train.trainer as trainer_module
    from polymodal.train.objectives import Objective
    from polymodal.train.trainer import TrainConfig, Trainer

    bars = []

    def spy(**kwargs):
        bars.append(progress_bar(file=io.StringIO(), **kwargs))
        return bars[-1]

    class Diverged(Objective):
        name = "fit"

        def compute(self, model, batch):
            return model(batch[0]).sum() * float("nan"), {}

    monkeypatch.setattr(trainer_module, "progress_bar", spy)
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = Trainer(torch.nn.Linear(2, 1), {"fit": (Diverged(), 1.0, loader)},
                      TrainConfig(epochs=1, patience=0), tmp_path, progress=True)
    with pytest.raises(PolymodalError, match="training loss became nan"):
        trainer.fit()
    assert bars and all(bar.disable for bar in bars)
