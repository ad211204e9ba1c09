"""Hard-negative captions (NegCLIP) in `polymodal train contrastive`: reading them, making them by word swaps,
batching them, the objective's loss and gradients, and a tiny training run that pushes images away from them."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import polymodal
from polymodal import cli
from polymodal.data.negatives import negatives_per_caption, swapped_captions
from polymodal.data.pairs import Pair, read_pair_source
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.errors import PolymodalError
from polymodal.losses import contrastive_loss
from polymodal.train.features import CachedPairDataset, collate_cached
from polymodal.train.objectives import ContrastiveObjective


def test_swaps_exchange_two_content_words_and_keep_punctuation():
    caption = "A dog chases a cat across the grass."
    out = swapped_captions(caption, k=10)
    assert "A cat chases a dog across the grass." in out
    assert "A dog chases a grass across the cat." in out  # the full stop stays at the end
    assert caption not in out and len(out) == len(set(out)) == 6  # C(4, 2) swaps of dog/chases/cat/grass
    for text in out:
        words, original = text.rstrip(".").split(), caption.rstrip(".").split()
        assert sorted(words) == sorted(original)
        assert [w for w, o in zip(words, original) if w != o].__len__() == 2
        assert [w for w in words if w.lower() in ("a", "the", "across")] == ["A", "a", "across", "the"]
    assert swapped_captions(caption, k=2) == out[:2] == swapped_captions(caption, k=2, seed=0)  # deterministic
    assert swapped_captions(caption, k=2, seed=1) != swapped_captions(caption, k=2, seed=0)
    assert swapped_captions("a dog in the park", k=3) == ["a park in the dog"]
    assert swapped_captions("a dog", k=3) == [] and swapped_captions("dogs and dogs", k=3) == []


def test_negatives_per_caption_modes():
    pairs = [Pair("a.jpg", "a dog chases a cat", ("a cat chases a dog",)), Pair("b.jpg", "a red bus on a road")]
    assert negatives_per_caption(pairs, "data") == [("a cat chases a dog",), ()]
    swap = negatives_per_caption(pairs, "swap", per_caption=2)
    assert swap[0] == ("a cat chases a dog",)  # given negatives win over generated ones
    assert len(swap[1]) == 2 and all(sorted(t.split()) == sorted(pairs[1].caption.split()) for t in swap[1])
    assert negatives_per_caption(pairs, "none") == [(), ()]
    with pytest.raises(PolymodalError, match="one of data, swap, none"):
        negatives_per_caption(pairs, "shuffle")


def test_jsonl_and_csv_rows_carry_negatives(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")  # the readers check that the file exists, not its pixels
    rows = [{"image": "x.jpg", "caption": "a dog chases a cat", "negatives": ["a cat chases a dog", " "]},
            {"image": "x.jpg", "caption": ["a brown dog", "a dog"], "negatives": "a brown cat"},
            {"image": "x.jpg", "caption": "a dog on grass", "negatives": "a dog on grass"}]  # same as caption: dropped
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_pair_source(tmp_path / "p.jsonl")
    assert [p.negatives for p in got.pairs] == [("a cat chases a dog",), ("a brown cat",), ("a brown cat",), ()]

    (tmp_path / "p.csv").write_text("filepath,title,negatives\nx.jpg,a dog chases a cat,a cat chases a dog | a cat\n"
                                    "x.jpg,a dog,\n")
    got = read_pair_source(tmp_path / "p.csv")
    assert [p.negatives for p in got.pairs] == [("a cat chases a dog", "a cat"), ()]
    (tmp_path / "q.csv").write_text("filepath,title\nx.jpg,a dog\n")
    assert not any(p.negatives for p in read_pair_source(tmp_path / "q.csv").pairs)


def test_dataset_serves_one_negative_of_the_drawn_caption():
    image_feats = np.arange(3 * 2, dtype=np.float16).reshape(1, 3, 2)
    texts = np.eye(4, dtype=np.float32)  # captions 0, 1 of image 0; 2 of image 1; 3 of image 2
    negative_feats = np.full((3, 4), -1.0, dtype=np.float32) * np.arange(1, 4)[:, None]
    negatives_of = [np.array([0]), np.array([1]), np.array([], dtype=np.int64), np.array([2])]
    data = CachedPairDataset(image_feats, texts, np.array([0, 0, 1, 2]), seed=0, negatives=(negative_feats, negatives_of))
    for epoch in range(4):
        data.set_epoch(epoch)
        items = [data[i] for i in range(3)]
        caption0 = int(items[0][1].argmax())
        assert float(items[0][2][0]) == -(caption0 + 1.0)  # caption 0 -> negative 0 (-1), caption 1 -> negative 1 (-2)
        assert items[1][2] is None and float(items[2][2][0]) == -3.0
        images, captions, negatives = collate_cached(items)
        assert images.shape == (3, 2) and captions.shape == (3, 4) and negatives.shape == (2, 4)
    plain = CachedPairDataset(image_feats, texts, np.array([0, 0, 1, 2]))
    assert len(collate_cached([plain[i] for i in range(3)])) == 2


class _Heads(torch.nn.Module):
    """What ContrastiveObjective needs of a dual encoder, over cached features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = torch.nn.Linear(6, 4), torch.nn.Linear(5, 4)
        self.logit_scale_tensor = torch.tensor(10.0)

    def image_from_cache(self, x):
        return self.image(x)

    def text_from_pooled(self, t):
        return self.text(t)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_objective_puts_negatives_in_the_loss_and_gradcache_agrees():
    g = torch.Generator().manual_seed(1)
    images, texts, negatives = torch.randn(6, 6, generator=g), torch.randn(6, 5, generator=g), torch.randn(3, 5, generator=g)
    model, objective = _Heads(), ContrastiveObjective()
    loss, _ = objective.compute(model, (images, texts, negatives))
    img, txt = F.normalize(model.image(images), dim=-1), F.normalize(model.text(texts), dim=-1)
    neg = F.normalize(model.text(negatives), dim=-1)
    torch.testing.assert_close(loss, contrastive_loss(img, txt, 10.0, negative_text_emb=neg).loss)
    assert loss.item() != pytest.approx(contrastive_loss(img, txt, 10.0).loss.item())
    empty, _ = objective.compute(model, (images, texts, []))  # a batch whose captions have no negatives
    torch.testing.assert_close(empty, contrastive_loss(img, txt, 10.0).loss)

    objective.backward(model, (images, texts, negatives))
    plain = _grads(model)
    model.zero_grad()
    ContrastiveObjective(gradcache_chunk=2).backward(model, (images, texts, negatives))
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.fixture(scope="module")
def negative_pairs(gallery):
    """Each sample photo with its caption and one fixed wrong caption, as JSONL next to the photos."""
    path = gallery / "negatives.jsonl"
    with path.open("w") as f:
        for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items():
            f.write(json.dumps({"image": f"{name}.jpg", "caption": desc, "negatives": ["a page of printed text"]}) + "\n")
    return path


def _margin(capsys, pairs, out, mode):
    """Trains on `pairs` with --hard-negatives MODE; mean similarity of each photo to the wrong caption minus to its
    own caption."""
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-fraction", "0", "--out", str(out),
                     "--quiet", "--batch-size", "8", "--epochs", "6", "--lr", "3e-3", "--embed-dim", "32",
                     "--warmup-steps", "1", "--hard-negatives", mode]) == 0
    capsys.readouterr()
    model = polymodal.load(str(out / "model"))
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    img = model.encode_image([pairs.parent / r["image"] for r in rows])
    own = (img * model.encode_text([r["caption"] for r in rows])).sum(1)
    wrong = img @ model.encode_text(["a page of printed text"])[0]
    return float(np.mean(wrong - own))


def test_training_with_negatives_pushes_photos_away_from_them(capsys, negative_pairs, tmp_path):
    with_negatives = _margin(capsys, negative_pairs, tmp_path / "data", "data")
    without = _margin(capsys, negative_pairs, tmp_path / "none", "none")
    assert with_negatives < without - 0.1, (with_negatives, without)


def test_bad_mode_is_one_clear_error(capsys, negative_pairs, tmp_path):
    code = cli.main(["train", "contrastive", "--pairs", str(negative_pairs), "--out", str(tmp_path / "r"),
                     "--hard-negatives", "random"])
    err = capsys.readouterr().err
    assert code != 0 and "hard_negatives" in err and "one of data, swap, none" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


class _TextModel:
    """Each photo's embedding is its caption's; texts embed by their words alone (bag of words) or by the whole
    string (order-aware). Stands in for an embedding model in the word-order tests."""

    def __init__(self, captions, bag_of_words: bool):
        self.captions, self.bag = list(captions), bag_of_words

    def _one(self, text):
        key = " ".join(sorted(text.split())) if self.bag else text
        v = np.random.default_rng(abs(hash(key)) % 2**32).normal(size=16)
        return v / np.linalg.norm(v)

    def encode_text(self, texts):
        return np.stack([self._one(t) for t in texts])

    def encode_image(self, images):
        return self.encode_text([self.captions[i] for i in images])


def test_word_order_accuracy_separates_bag_of_words_from_order_aware_models():
    from polymodal.eval.word_order import KINDS, scrambled, word_order_accuracy

    captions = ["a dog chases a cat across the grass .", "a man rides a red bike down the street",
                "two girls play with a ball on the beach", "a dog"]  # the last has too few words to scramble
    for kind in KINDS:
        copies = scrambled(captions[0], kind)
        assert len(copies) == 4 and captions[0] not in copies
        assert all(sorted(c.split()) == sorted(captions[0].split()) for c in copies)
    assert scrambled(captions[0], "trigrams") == scrambled(captions[0], "trigrams")  # deterministic
    images = list(range(len(captions)))
    bag = word_order_accuracy(_TextModel(captions, True), images, captions)
    assert all(bag[f"order/{k}"] == 0.0 for k in KINDS), bag  # ties are no win
    aware = word_order_accuracy(_TextModel(captions, False), images, captions)
    assert all(aware[f"order/{k}"] == 1.0 and aware[f"order/{k}_n"] == 3 for k in KINDS), aware


def test_eval_retrieval_reports_word_order(capsys, negative_pairs):
    assert cli.main(["eval", "retrieval", "--pairs", str(negative_pairs), "--model", "default", "--word-order"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert {"order/swap", "order/trigrams", "order/within", "order/shuffle"} <= set(line)
    assert line["order/shuffle"] is not None and 0.0 <= line["order/shuffle"] <= 1.0 and line["t2i_R@1"] > 0


def test_shards_carry_hard_negatives(gallery, tmp_path):
    """write_shards keeps each caption's negatives in the sample's .json; a hand-made shard may give one list for
    all captions of its sample."""
    import io
    import tarfile

    from polymodal.data.pairs import PairSet
    from polymodal.data.shards import write_shards

    pairs = [Pair((gallery / "cat.jpg").resolve(), "a cat on a sofa", ("a sofa on a cat",)),
             Pair((gallery / "cat.jpg").resolve(), "a tabby cat"),
             Pair((gallery / "coffee.jpg").resolve(), "a cup of coffee")]
    write_shards(PairSet.from_pairs(pairs), tmp_path / "shards")
    got = read_pair_source(tmp_path / "shards")
    assert [(p.caption, p.negatives) for p in got.pairs] == [
        ("a cat on a sofa", ("a sofa on a cat",)), ("a tabby cat", ()), ("a cup of coffee", ())]

    meta = {"captions": ["a dog", "a brown dog"], "negatives": ["a cat", "a dog"]}  # "a dog" is dropped for caption 1
    with tarfile.open(tmp_path / "hand.tar", "w") as tf:
        for name, data in (("x.jpg", (gallery / "cat.jpg").read_bytes()), ("x.json", json.dumps(meta).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    got = read_pair_source(tmp_path / "hand.tar")
    assert [p.negatives for p in got.pairs] == [("a cat",), ("a cat", "a dog")]


def test_words_joined_by_and_or_are_not_swapped():
    assert "a small white and tan dog" not in swapped_captions("a small tan and white dog", k=20)
    assert "a man singing or yelling" not in swapped_captions("a man yelling or singing", k=20)
    assert "a cat and a dog" not in swapped_captions("a dog and a cat", k=20)  # coordination is symmetric
    assert "a cat chases a dog" in swapped_captions("a dog chases a cat", k=20)


def test_only_strings_are_negatives(gallery, tmp_path):
    import io
    import tarfile

    meta = {"captions": ["a dog", " ", "a cat"], "negatives": [["a cat"], [], ["a dog"]]}  # blank caption dropped
    with tarfile.open(tmp_path / "x.tar", "w") as tf:
        for name, data in (("x.jpg", (gallery / "cat.jpg").read_bytes()), ("x.json", json.dumps(meta).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert [p.negatives for p in read_pair_source(tmp_path / "x.tar").pairs] == [(), ()]  # no "['a cat']" texts
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": str(gallery / "cat.jpg"), "caption": "a cat",
                                                  "negatives": [["a dog"], {"x": 1}, "a cow"]}) + "\n")
    assert read_pair_source(tmp_path / "p.jsonl").pairs[0].negatives == ("a cow",)
