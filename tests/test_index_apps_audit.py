"""What a mutation audit of the image index (store/scan), the yes/no model, ConSE, heat maps and zero-shot showed
slipping through: readers holding an index open while another process changes it, stale FAISS files, folder
ranges, removal by other spellings of a path, unreadable files, the empty index, the yes/no pool statistics and
tie-break, ConSE top-k weighting and its class-prompt cache, heat-map colours/alignment/scaling, prompt templates
with braces and zero-shot scoring. Each test was checked to fail on its mutation; all use tiny synthetic inputs."""

from __future__ import annotations

import os
import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.apps.zeroshot import ZeroShotMixin
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex, scan_images
from test_index import FakeModel, paint


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for colour in ("red", "green", "blue"):
        paint(folder / f"{colour}.png", colour)
    return folder


@pytest.fixture
def built(tmp_path: Path, photos: Path) -> ImageIndex:
    index = ImageIndex(tmp_path / "db")
    index.update(photos, FakeModel(), progress=False)
    return index


def names(hits) -> list[str]:
    return [Path(h.path).name for h in hits]


def faiss_ids(index: ImageIndex) -> list[int]:
    import faiss

    stored = faiss.read_index(str(index.faiss_path))
    return sorted(faiss.vector_to_array(stored.id_map).tolist())


def sqlite_ids(index: ImageIndex) -> list[int]:
    with sqlite3.connect(index.sqlite_path) as con:
        return [r[0] for r in con.execute("SELECT id FROM images ORDER BY id")]


def generation(index: ImageIndex) -> int:
    with sqlite3.connect(index.sqlite_path) as con:
        return int(con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


# ---------------------------------------------------------------------------------------------- index: other readers


def test_a_long_lived_reader_sees_deletions_made_by_another_writer(built, photos) -> None:
    # A server keeps one ImageIndex (and its cached FAISS index) open while `polymodal index` runs elsewhere: a
    # deletion-only update and a remove() must both invalidate that cache (the generation) and rewrite the file.
    reader = ImageIndex(built.db)
    assert names(reader.search_text(FakeModel(), "blue", k=1)) == ["blue.png"]  # now cached
    before = generation(built)
    (photos / "blue.png").unlink()
    report = ImageIndex(built.db).update(photos, FakeModel(), progress=False)
    assert (report.added, report.removed) == (0, 1)
    assert generation(built) == before + 1
    assert faiss_ids(built) == sqlite_ids(built) and len(sqlite_ids(built)) == 2
    hits = reader.search_text(FakeModel(), "blue", k=3)
    assert len(hits) == 2 and "blue.png" not in names(hits)

    assert names(reader.search_text(FakeModel(), "red", k=1)) == ["red.png"]  # cached again
    assert ImageIndex(built.db).remove(photos / "red.png") == 1
    assert generation(built) == before + 2
    hits = reader.search_text(FakeModel(), "red", k=1)
    assert names(hits) == ["green.png"]


def test_a_long_lived_reader_sees_a_modified_image(built, photos) -> None:
    reader = ImageIndex(built.db)
    assert names(reader.search_text(FakeModel(), "yellow", k=1)) != []
    green = photos / "green.png"
    paint(green, "yellow", mtime=green.stat().st_mtime + 10)
    assert ImageIndex(built.db).update(photos, FakeModel(), progress=False).updated == 1
    hit = reader.search_text(FakeModel(), "yellow", k=1)[0]
    assert Path(hit.path).name == "green.png" and hit.score == pytest.approx(1.0, abs=1e-4)


def test_an_unchanged_update_keeps_the_faiss_file_and_generation(built, photos) -> None:
    # Nothing changed: readers' caches stay valid and the file is not rewritten.
    inode, before = built.faiss_path.stat().st_ino, generation(built)
    report = ImageIndex(built.db).update(photos, FakeModel(), progress=False)
    assert (report.unchanged, report.added, report.updated, report.removed) == (3, 0, 0, 0)
    assert built.faiss_path.stat().st_ino == inode and generation(built) == before


def test_a_stale_faiss_file_with_the_same_count_is_rebuilt(built, photos) -> None:
    # A modified image gets a new row id: the old file has as many ids as the table, but not the same ones.
    old = built.faiss_path.read_bytes()
    green = photos / "green.png"
    paint(green, "yellow", mtime=green.stat().st_mtime + 10)
    built.update(photos, FakeModel(), progress=False)
    built.faiss_path.write_bytes(old)  # a crash between the commit and the FAISS write
    hit = ImageIndex(built.db).search_text(FakeModel(), "yellow", k=1)[0]
    assert Path(hit.path).name == "green.png" and hit.score == pytest.approx(1.0, abs=1e-4)
    assert faiss_ids(built) == sqlite_ids(built)


def test_a_reader_does_not_write_back_a_rebuild_older_than_the_last_commit(built, photos) -> None:
    reader = ImageIndex(built.db)
    with reader._reading() as (con, meta):
        stale, _ = reader._load_vectors(con, meta)  # what a reader rebuilt just before a writer committed
    paint(photos / "white.png", "white")
    assert built.update(photos, FakeModel(), progress=False).added == 1
    reader._try_save(stale.single(), meta)
    assert faiss_ids(built) == sqlite_ids(built) and len(sqlite_ids(built)) == 4


# ---------------------------------------------------------------------------------------------- index: folders, files


def test_a_sibling_folder_sorting_before_the_separator_is_left_alone(built, photos, tmp_path) -> None:
    # "photos-old" and "photos.d" sort between "photos" and "photos/": the lower bound must include the separator
    for sibling in ("photos-old", "photos.d"):
        paint(tmp_path / sibling / "white.png", "white")
        assert built.update(tmp_path / sibling, FakeModel(), progress=False).added == 1
    report = built.update(photos, FakeModel(), progress=False)
    assert (report.removed, report.unchanged) == (0, 3)
    assert len(built) == 5


def test_a_changed_file_that_cannot_be_read_loses_its_old_vector(built, photos, monkeypatch) -> None:
    import polymodal.index.store as store

    red = photos / "red.png"
    os.utime(red, (red.stat().st_mtime + 10,) * 2)  # same size, new mtime: the content must be hashed

    def unreadable(path):
        if Path(path).name == "red.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    real = store.file_sha256
    monkeypatch.setattr(store, "file_sha256", unreadable)
    report = built.update(photos, FakeModel(), progress=False)
    assert [(Path(p).name, why) for p, why in report.skipped] == [("red.png", "cannot read (Permission denied)")]
    assert len(built) == 2 and "red.png" not in names(built.search_text(FakeModel(), "red", k=3))
    assert faiss_ids(built) == sqlite_ids(built)


def test_a_new_file_that_cannot_be_hashed_is_skipped_not_fatal(built, photos, monkeypatch) -> None:
    import polymodal.index.store as store

    paint(photos / "white.png", "white")
    paint(photos / "cyan.png", "cyan")
    real = store.file_sha256
    monkeypatch.setattr(store, "file_sha256", lambda p: (_ for _ in ()).throw(OSError(5, "I/O error"))
                        if Path(p).name == "white.png" else real(p))
    report = built.update(photos, FakeModel(), progress=False)
    assert report.added == 1 and [(Path(p).name, why) for p, why in report.skipped] == [("white.png", "cannot read (I/O error)")]
    assert len(built) == 4


def test_remove_takes_one_path_relative_or_through_a_linked_folder(built, photos, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(photos)
    assert built.remove("red.png") == 1  # one relative path, not an iterable of characters
    link = tmp_path / "linked"
    link.symlink_to(photos, target_is_directory=True)
    assert built.remove([link / "green.png"]) == 1  # the folder is resolved
    assert built.remove(photos / "sub" / ".." / "blue.png") == 1
    assert len(built) == 0


def test_remove_counts_an_image_named_twice_once(built, photos) -> None:
    # Real bug: remove([p, p]) reported 2 removed images when the index held one.
    assert built.remove([photos / "red.png", photos / "red.png", photos / "." / "red.png"]) == 1
    assert len(built) == 2 and faiss_ids(built) == sqlite_ids(built)


def test_a_symlinked_file_is_indexed_under_its_own_name(built, photos) -> None:
    (photos / "alias.png").symlink_to(photos / "red.png")
    assert built.update(photos, FakeModel(), progress=False).added == 1
    assert built.remove(photos / "alias.png") == 1  # the link, not its target
    assert len(built) == 3 and names(built.search_text(FakeModel(), "red", k=1)) == ["red.png"]


def test_scan_skips_hidden_files_and_reports_broken_links(photos) -> None:
    paint(photos / "._red.png", "red")  # a macOS resource fork that only looks like an image
    (photos / "gone.png").symlink_to(photos / "nowhere.png")
    files, skipped = scan_images(photos)
    assert [Path(f.path).name for f in files] == ["blue.png", "green.png", "red.png"]
    assert [(Path(p).name, why.split(" (")[0]) for p, why in skipped] == [("gone.png", "cannot stat")]


def test_a_wrong_model_is_refused_before_the_folder_is_scanned(built, tmp_path) -> None:
    with pytest.raises(PolymodalError, match="built with model fake@1"):
        built.update(tmp_path / "not-there", FakeModel(version="2"), progress=False)


# ---------------------------------------------------------------------------------------------- index: searching


def test_searching_an_emptied_index_returns_no_hits(built, photos) -> None:
    assert built.remove([photos / f"{c}.png" for c in ("red", "green", "blue")]) == 3
    queries = FakeModel().encode_text(["red", "green"])
    assert built.search(queries, k=5) == [[], []]
    assert ImageIndex(built.db).search_text(FakeModel(), "red") == []


def test_each_query_row_is_normalised_on_its_own(built) -> None:
    q = FakeModel().encode_text(["red", "green", "blue"]) * np.array([[20.0], [0.05], [1.0]], np.float32)
    hits = built.search(q, k=3)
    assert [h[0].score for h in hits] == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    assert [names(h)[0] for h in hits] == ["red.png", "green.png", "blue.png"]
    assert all([h.score for h in row] == sorted((h.score for h in row), reverse=True) for row in hits)


def test_a_query_with_nan_is_refused(built) -> None:
    q = FakeModel().encode_text(["red", "green"])
    q[1, 3] = np.nan
    with pytest.raises(PolymodalError, match=r"row\(s\) \[1\] hold NaN"):
        built.search(q, k=2)


def test_the_faiss_file_follows_a_restricted_database_mode(built, photos) -> None:
    os.chmod(built.sqlite_path, 0o640)  # e.g. an index shared with one group only
    paint(photos / "white.png", "white")
    assert built.update(photos, FakeModel(), progress=False).added == 1
    assert built.faiss_path.stat().st_mode & 0o777 == 0o640

def test_paths_for_more_ids_than_one_sqlite_chunk() -> None:
    from polymodal.index.store import _paths

    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT)")
    con.executemany("INSERT INTO images VALUES (?, ?)", [(i, f"/p/{i}.png") for i in range(1, 1203)])
    ids = list(range(1202, 0, -1)) + [5, 5]
    assert _paths(con, ids) == {i: f"/p/{i}.png" for i in range(1, 1203)}


# ---------------------------------------------------------------------------------------------- yes/no model


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _fake_embeddings(rng, n_images, n_questions):
    from polymodal.models.yesno import DIM, SPACES

    images = {sp: _unit(rng.normal(size=(n_images, DIM)) + 2 * rng.normal(size=DIM)) for sp in SPACES}
    questions = {sp: _unit(rng.normal(size=(n_questions, DIM)) + 2 * rng.normal(size=DIM)) for sp in SPACES}
    questions["question"] = _unit(rng.normal(size=(n_questions, DIM)))
    return images, questions


def test_yesno_pools_use_only_the_training_images_and_distinct_phrases():
    # Cross-validation passes every image's embedding: the held-out ones must not leak into the image pool, and a
    # phrase asked many times counts once in the phrase pool.
    from polymodal.models.yesno import SPACES, fit_state, pool_stats

    rng = np.random.default_rng(0)
    image_emb, q_emb = _fake_embeddings(rng, 12, 6)
    rows_q = [0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 1, 1]  # phrase 0 asked five times
    q_rows = {k: v[rows_q] for k, v in q_emb.items()}
    row_image = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]  # images 6..11 are held out
    answers = ["yes", "no"] * 6
    state = fit_state(image_emb, q_rows, row_image, answers)
    for sp in SPACES:
        mean, cov = pool_stats(image_emb[sp][:6])
        np.testing.assert_allclose(state[f"{sp}_image_mean"], mean, atol=1e-6)
        np.testing.assert_allclose(state[f"{sp}_image_cov"], cov, atol=1e-6)
        mean, cov = pool_stats(q_emb[sp])
        np.testing.assert_allclose(state[f"{sp}_text_mean"], mean, atol=1e-3)
        np.testing.assert_allclose(state[f"{sp}_text_cov"], cov, atol=1e-4)


def test_yesno_regularisation_strength_is_used():
    from polymodal.models.yesno import fit_state

    rng = np.random.default_rng(1)
    image_emb, q_emb = _fake_embeddings(rng, 20, 20)
    answers = ["yes" if v else "no" for v in rng.integers(0, 2, 20)]
    strong = fit_state(image_emb, q_emb, np.arange(20), answers, C=0.01)["coef"]
    weak = fit_state(image_emb, q_emb, np.arange(20), answers, C=100.0)["coef"]
    assert np.linalg.norm(strong) < 0.5 * np.linalg.norm(weak)


def test_yesno_predict_and_answer_agree_at_an_even_probability(monkeypatch):
    # With no evidence (zero weights) p(yes) is exactly 0.5: predict() and answer() must give the same answer.
    from polymodal.models.yesno import YesNoModel, _empty_state

    rng = np.random.default_rng(2)
    model = YesNoModel(_empty_state(), base=object())
    image_emb, q_emb = _fake_embeddings(rng, 1, 1)
    monkeypatch.setattr(model, "encode_images", lambda images, *a: {k: v[[0] * len(images)] for k, v in image_emb.items()})
    monkeypatch.setattr(model, "encode_questions", lambda qs, *a: {k: v[[0] * len(qs)] for k, v in q_emb.items()})
    assert model.predict(["img"], ["Is there a dog?"]) == [("yes", 0.5)]
    res = model.answer("img", "Is there a dog?")
    assert (res["answer"], res["score"]) == ("yes", 0.5)


@pytest.mark.parametrize("intercept, answer", [(2.0, "yes"), (-2.0, "no")])
def test_yesno_answer_and_predict_report_the_likelier_answer(monkeypatch, intercept, answer):
    from polymodal.models.yesno import YesNoModel, _empty_state

    state = _empty_state()
    state["intercept"] = np.array([intercept])
    model = YesNoModel(state, base=object())
    image_emb, q_emb = _fake_embeddings(np.random.default_rng(4), 1, 1)
    monkeypatch.setattr(model, "encode_images", lambda images, *a: {k: v[[0] * len(images)] for k, v in image_emb.items()})
    monkeypatch.setattr(model, "encode_questions", lambda qs, *a: {k: v[[0] * len(qs)] for k, v in q_emb.items()})
    p = 1 / (1 + np.exp(-2.0))  # the likelier answer's probability
    assert model.predict(["img"], ["Is there a dog?"]) == [(answer, pytest.approx(p))]
    res = model.answer("img", "Is there a dog?")
    other = "no" if answer == "yes" else "yes"
    assert res["answer"] == answer and res["alternatives"] == [(answer, pytest.approx(p)), (other, pytest.approx(1 - p))]
    assert model.answer("img", "Is there a dog?", choices=["No", "Yes"])["answer"] == answer.capitalize()


def test_yesno_predict_pairs_each_image_with_its_own_question(monkeypatch):
    from polymodal.models.yesno import FEATURES, YesNoModel, _empty_state

    rng = np.random.default_rng(6)
    state = _empty_state()
    state["coef"] = rng.normal(size=len(FEATURES) + 384) * 3
    model = YesNoModel(state, base=object())
    image_emb, q_emb = _fake_embeddings(rng, 2, 3)
    imgs, qs = ["i0", "i1"], ["Is it a?", "Is it b?", "Is it c?"]
    monkeypatch.setattr(model, "encode_images",
                        lambda images, *a: {k: v[[imgs.index(i) for i in images]] for k, v in image_emb.items()})
    monkeypatch.setattr(model, "encode_questions",
                        lambda questions, *a: {k: v[[qs.index(q) for q in questions]] for k, v in q_emb.items()})
    rows = [("i0", "Is it c?"), ("i0", "Is it a?"), ("i1", "Is it c?"), ("i1", "Is it b?")]
    together = model.predict([i for i, _ in rows], [q for _, q in rows])
    alone = [model.predict([i], [q])[0] for i, q in rows]
    # scores to float32 precision: a product over 4 rows need not equal 4 products over 1 row in the last bit
    assert [a for a, _ in together] == [a for a, _ in alone]
    assert [p for _, p in together] == pytest.approx([p for _, p in alone], abs=1e-6)
    assert len({round(p, 4) for _, p in alone}) == 4


def test_yesno_fit_learns_which_way_is_yes():
    from polymodal.models.yesno import fit_state, row_features

    rng = np.random.default_rng(5)
    image_emb, q_emb = _fake_embeddings(rng, 40, 40)
    y = rng.integers(0, 2, 40)
    direction = _unit(rng.normal(size=384))
    q_emb["question"] = _unit(q_emb["question"] + np.where(y[:, None] == 1, 2, -2) * direction)  # yes-questions differ
    state = fit_state(image_emb, q_emb, np.arange(40), ["yes" if v else "no" for v in y], C=1.0)
    logit = row_features(state, image_emb, q_emb, np.arange(40)) @ state["coef"] + state["intercept"][0]
    assert np.mean((logit > 0) == (y == 1)) == 1.0


def test_yesno_encodings_are_unit_rows_in_every_space():
    # The z-scores are computed against pools of unit vectors: every encoding the model scores must be one too.
    from polymodal.models.yesno import DIM, YesNoModel, _empty_state, load_base

    model = YesNoModel(_empty_state(), base=load_base("default"))
    images = model.encode_images([Image.new("RGB", (32, 32), c) for c in ("red", "navy", "white")], batch_size=2)
    questions = model.encode_questions(["Is it red?", "Is there a dog here?", "Could this be a zoo?"], batch_size=2)
    assert set(images) == {"default", "conse"} and set(questions) == {"question", "default", "conse"}
    for emb in (*images.values(), *questions.values()):
        assert emb.shape == (3, DIM)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("question, key", [
    ("Is there a dog here?", "a dog"),
    ("Is there a cat visible?", "a cat"),
    ("Are there any boats in sight?", "boats"),
    ("Are there clouds in the photo?", "clouds"),
])
def test_yesno_key_phrase_drops_generic_place_words(question, key):
    from polymodal.models.yesno import question_to_statement

    assert question_to_statement(question) == (f"a photo with {key}", key)


# ---------------------------------------------------------------------------------------------- ConSE


def test_conse_embedding_is_the_probability_weighted_sum_of_the_top_k_prompts():
    from polymodal.models.conse import conse_embedding

    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0, 0.5]])
    matrix = torch.from_numpy(np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32))
    p = torch.softmax(logits, -1)[0]  # over all classes, not renormalised over the top k
    expected = p[0] * matrix[0] + p[2] * matrix[2]
    torch.testing.assert_close(conse_embedding(logits, matrix, top_k=2)[0], expected)
    torch.testing.assert_close(conse_embedding(logits, matrix, top_k=1)[0], p[0] * matrix[0])


class _FakeTower:
    dim = 4

    def __init__(self):
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        rows = [np.random.default_rng(zlib.crc32(p.encode())).normal(size=4) * 3 for p in prompts]
        return torch.tensor(np.array(rows), dtype=torch.float32)


def test_class_prompt_matrix_templates_normalises_and_caches(monkeypatch, tmp_path):
    import polymodal.models.conse as conse
    from polymodal.cache import cache_dir

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))  # test_lite counts the session cache's class matrices
    monkeypatch.setattr(conse, "imagenet_classes", lambda: ["cat", "dog", "tabby cat"])
    tower = _FakeTower()
    first = conse.class_prompt_matrix(tower)
    assert tower.calls == [["a photo of a cat", "a photo of a dog", "a photo of a tabby cat"]]
    assert first.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(conse.class_prompt_matrix(tower), first)
    assert len(tower.calls) == 1  # read from the cache
    (path,) = cache_dir().glob("conse-classes-*.npy")

    np.save(path, np.zeros((2, 4), np.float32))  # a cache of the wrong shape is recomputed
    np.testing.assert_allclose(conse.class_prompt_matrix(tower), first)
    path.write_bytes(b"not an npy file")  # an unreadable one too
    np.testing.assert_allclose(conse.class_prompt_matrix(tower), first)
    assert len(tower.calls) == 3

    monkeypatch.setattr(conse, "imagenet_classes", lambda: ["cat", "dog", "bird"])  # other classes: other file
    other = conse.class_prompt_matrix(tower)
    assert tower.calls[-1][-1] == "a photo of a bird" and not np.allclose(other[2], first[2])


def test_conse_model_uses_its_top_k(monkeypatch):
    import polymodal.models.conse as conse

    class Tower:
        dim = 12

    class Image:
        def __call__(self, pixels):  # 12 classes, so the default k (10) is not all of them
            return torch.arange(12.0).repeat(len(pixels), 1)

    matrix = np.eye(12, dtype=np.float32)
    monkeypatch.setattr(conse, "minilm_path", lambda: None)
    monkeypatch.setattr(conse, "SentenceEncoder", lambda path: Tower())
    monkeypatch.setattr(conse, "EfficientNetLite0", Image)
    monkeypatch.setattr(conse, "imagenet_classes", lambda: [f"class {i}" for i in range(12)])
    monkeypatch.setattr(conse, "class_prompt_matrix", lambda tower: matrix)
    one, three = conse.ConSEModel(top_k=1), conse.ConSEModel(top_k=3)
    assert one.version != three.version  # an index built with one k refuses the other
    pixels = torch.zeros((1, 3, 2, 2))
    assert np.flatnonzero(one._image_batch(pixels).numpy()[0]).tolist() == [11]
    assert np.flatnonzero(three._image_batch(pixels).numpy()[0]).tolist() == [9, 10, 11]


# ---------------------------------------------------------------------------------------------- heat maps


def test_heat_colours_span_the_ramp_and_clip():
    from polymodal.apps.explain import heat_colors

    got = heat_colors(np.array([[0.0, 0.5, 1.0, -3.0, 7.0]]))[0].tolist()
    assert got == [[0, 0, 128], [0, 200, 80], [230, 20, 0], [0, 0, 128], [230, 20, 0]]


class _MeanModel:
    from polymodal.data.images import ImageTransform

    transform = ImageTransform(resize=56, crop=56)

    def embed_pixels(self, pixels):
        a = pixels.mean(axis=(1, 2, 3))
        e = np.stack([a, np.ones_like(a)], 1)
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def test_occlusion_cells_cover_the_whole_crop_equally():
    from polymodal.apps.explain import occlusion_heat

    query = np.array([1, 1]) / np.sqrt(2)
    heat = occlusion_heat(_MeanModel(), Image.new("RGB", (56, 56), "white"), query, grid=2, window=1)
    assert heat.min() > 0.01 and np.allclose(heat, heat[0, 0], rtol=1e-5)  # four 28x28 blocks, equal drops
    whole = occlusion_heat(_MeanModel(), Image.new("RGB", (56, 56), "white"), query, grid=3, window=10)
    assert np.isfinite(whole).all() and np.allclose(whole, whole[0, 0]) and whole[0, 0] > heat[0, 0]


def test_occlusion_that_raises_the_match_counts_as_zero():
    from polymodal.apps.explain import occlusion_heat

    query = np.array([1, 1]) / np.sqrt(2)  # black image: blanking (towards the mean colour) raises the cosine
    heat = occlusion_heat(_MeanModel(), Image.new("RGB", (56, 56), "black"), query, grid=3, window=2)
    assert np.array_equal(heat, np.zeros((3, 3), np.float32))


def test_overlay_is_scale_free_aligned_smooth_and_blended_by_alpha():
    from polymodal.apps.explain import overlay_heatmap

    img = Image.new("RGB", (70, 70), (128, 128, 128))
    heat = np.zeros((7, 7), np.float32)
    heat[0, 6] = 1.0  # top-right cell
    out = np.asarray(overlay_heatmap(img, heat), np.int16)
    np.testing.assert_array_equal(out, np.asarray(overlay_heatmap(img, 0.01 * heat + 5)))  # min-max scaled
    assert out[2, 67, 0] > 150 and out[67, 2, 0] == 64  # red where the heat is, blue (0,0,128) blended elsewhere
    ramp = np.asarray(overlay_heatmap(img, np.tile(np.arange(7.0), (7, 1))), np.int16)
    assert len(np.unique(ramp[35, :, 0])) > 20  # smoothly upsampled, not 7 blocks
    flat = np.asarray(overlay_heatmap(img, np.full((7, 7), 0.3)), np.int16)
    assert (flat == np.array([64, 64, 128])).all()  # no contrast: all the lowest colour
    assert np.array_equal(np.asarray(overlay_heatmap(img, heat, alpha=0.0)), np.asarray(img))
    pure = np.asarray(overlay_heatmap(img, heat, alpha=1.0), np.int16)
    assert pure[67, 2].tolist() == [0, 0, 128]
    with pytest.raises(PolymodalError, match="finite 2-D"):
        overlay_heatmap(img, np.full((7, 7), np.nan))


def test_heat_over_a_tall_image_sits_on_its_centre_crop(tmp_path):
    from polymodal.apps.explain import save_heatmap
    from polymodal.data.images import ImageTransform

    img = Image.new("RGB", (224, 448), "gray")
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 1
    out = save_heatmap(img, heat, tmp_path / "h.PNG", transform=ImageTransform(224, 224), legend=False)
    out = np.asarray(Image.open(out), np.int16)
    assert out.shape == (448, 224, 3)
    assert (out[:112] == 128).all() and (out[337:] == 128).all()  # above and below the crop: untouched
    assert np.abs(out[112:336] - 128).max() > 20


def test_save_heatmap_replaces_the_file_instead_of_rewriting_it(tmp_path):
    from polymodal.apps.explain import save_heatmap

    img = Image.new("RGB", (32, 32), "gray")
    out = save_heatmap(img, np.eye(3), tmp_path / "h.png", transform=None)
    os.link(out, tmp_path / "old.png")  # e.g. a viewer holding the previous picture
    before = (tmp_path / "old.png").read_bytes()
    save_heatmap(img, np.eye(3)[::-1], out, transform=None)
    assert (tmp_path / "old.png").read_bytes() == before and out.read_bytes() != before


# ---------------------------------------------------------------------------------------------- zero-shot


class _Embedder(ZeroShotMixin):
    logit_scale = 100.0

    def __init__(self):
        self.text_calls = []

    def encode_text(self, texts):
        self.text_calls.append(list(texts))
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]).astype(np.float32)

    def encode_image(self, images):
        raise AssertionError("images must not be encoded here")


def test_templates_may_hold_other_braces():
    model = _Embedder()
    emb = model.label_embeddings(["cat"], ["a {} on a {curly} mat", "{a} {}"])
    assert model.text_calls == [["a cat on a {curly} mat", "{a} cat"]] and emb.shape == (1, 8)


def test_rank_labels_scores_are_the_scaled_softmax():
    from polymodal.apps.zeroshot import rank_labels

    image = _unit(np.array([[1.0, 0.2, 0.0]]))
    labels_emb = np.eye(3, dtype=np.float32)
    for scale in (1.0, 10.0):
        ranked = rank_labels(image, labels_emb, ["a", "b", "c"], scale)[0]
        logits = scale * image[0]
        expected = np.exp(logits) / np.exp(logits).sum()
        assert [lab for lab, _ in ranked] == ["a", "b", "c"]
        assert [s for _, s in ranked] == pytest.approx(expected.tolist(), rel=1e-5)


def test_zeroshot_accuracy_uses_given_image_embeddings():
    from polymodal.eval.zeroshot import zeroshot_accuracy

    model = _Embedder()
    classes = model.label_embeddings(["x", "y"], ("a {}.",))
    out = zeroshot_accuracy(model, ["one", "two"], ["y", "x"], templates=("a {}.",), image_emb=classes[::-1])
    assert out == {"top1": 1.0, "top5": 1.0, "balanced_top1": 1.0, "images": 2, "photos": 2, "unreadable": 0,
                   "not_finite": 0, "classes": 2}


def test_labels_file_skips_a_folder_named_like_an_image(tmp_path):
    import json

    from polymodal.eval.zeroshot import read_labelled_images

    (tmp_path / "dir.png").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"image": i, "label": l}) + "\n"
                              for i, l in (("dir.png", "cat"), ("a.png", "dog"), ("b.png", "fox"))))
    images, got = read_labelled_images(labels)
    assert [p.name for p in images] == ["a.png", "b.png"] and got == ["dog", "fox"]
