"""Speed review (stop 43); the tests check behaviour (the fast path taken, outputs unchanged), not timings.
The CLI keeps freed memory in glibc's heap instead of unmapping each large block: PyTorch's activations were
page-faulted in afresh on every pass (~30% of the `lite` image tower's CPU time was system time). encode_text cuts
its batches in order of text length (each batch is padded to its longest text)."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from polymodal.models.interface import EmbeddingInterface

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt tuning is for glibc")

_FAULTS = """
import ctypes, resource, sys
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "cli":
    from polymodal import cli
    assert cli.main(["search", "--db", "nowhere"]) == 2  # any command, even one that stops at its first check
if sys.argv[1] == "train":  # not for training: backward passes through unfrozen blocks fragment the heap
    from polymodal import cli
    assert cli.main(["train", "contrastive", "--pairs", "nowhere.jsonl", "--out", "nowhere-run"]) == 2

def faults():  # page faults to fill a 64 MB block (over glibc's largest mmap threshold) and free it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 << 20)  # malloc itself: numpy asks for huge pages, torch does not
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
print(min(faults() for _ in range(3)))
"""


def _faults(mode: str, **env) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"} | env
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


@glibc_only
def test_the_cli_reuses_freed_large_blocks_without_page_faults():
    assert _faults("plain") > 10_000  # glibc's default: 64 MB unmapped on free, faulted in again (16,384 pages)
    assert _faults("cli") < 1_000  # after the CLI's set-up: served again from the heap


@glibc_only
def test_training_keeps_glibcs_default():
    assert _faults("train") > 10_000


@glibc_only
def test_a_user_who_tuned_malloc_keeps_their_settings():
    assert _faults("cli", MALLOC_ARENA_MAX="2") > 10_000
    assert _faults("cli", GLIBC_TUNABLES="glibc.malloc.arena_max=2") > 10_000


def test_the_cli_module_still_imports_no_torch():
    code = "import sys, polymodal.cli; polymodal.cli._keep_freed_memory(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- encode_text batches texts by length (padding to each batch's longest text cost 1.86x the tokens on Flickr8k
# captions in their own order, 1.03x sorted) -------------------------------------------------------------------------

_TEXTS = ["a dog", "two children are playing in the water near a red boat on a sunny day", "snow",
          "a man rides a bicycle down a busy city street", "cat", "people", "a brown dog runs on the grass",
          "a woman in a blue dress is sitting on a bench next to an old man reading a newspaper", "sky", "a car"]


def test_encode_text_gives_each_text_its_own_batch_order_vector(lite):
    got = lite.encode_text(_TEXTS, batch_size=3)
    alone = np.concatenate([lite.embed_texts([t]) for t in _TEXTS])  # row i is text i's, whatever the batches
    np.testing.assert_allclose(got, alone, atol=1e-5)
    in_order = np.concatenate([lite.embed_texts(_TEXTS[i : i + 3]) for i in range(0, len(_TEXTS), 3)])
    np.testing.assert_allclose(got, in_order, atol=1e-5)


class _Recorder(EmbeddingInterface):
    dim = 2

    def __init__(self, independent: bool = True) -> None:
        self.batches, self.texts_batch_independent = [], independent

    def embed_texts(self, texts):
        self.batches.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], np.float32)


def test_batches_hold_texts_of_similar_length_and_rows_come_back_in_order():
    model = _Recorder()
    out = model.encode_text(_TEXTS, batch_size=4)
    assert [len(b) for b in model.batches] == [4, 4, 2]
    lengths = [len(t) for b in model.batches for t in b]
    assert lengths == sorted(lengths)  # the fast path: shortest texts together, longest together
    assert out[:, 0].tolist() == [len(t) for t in _TEXTS]


def test_one_batch_and_batch_dependent_graphs_keep_the_callers_order():
    one = _Recorder()
    one.encode_text(_TEXTS, batch_size=64)
    assert one.batches == [_TEXTS]
    int8 = _Recorder(independent=False)  # an int8 dynamic text graph: its vectors depend on the batch's other texts
    int8.encode_text(_TEXTS, batch_size=4)
    assert int8.batches == [_TEXTS[0:4], _TEXTS[4:8], _TEXTS[8:]]


@glibc_only
def test_heap_reuse_benchmark_compares_both_sides(gallery, tmp_path, capsys):
    import shutil

    from conftest import benchmark_module

    photos = tmp_path / "photos"  # two of the gallery's photos: each side indexes them in a process of its own
    photos.mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        shutil.copy(gallery / name, photos / name)
    bench = benchmark_module("heap_reuse", "s43")
    assert bench.main(["--images", str(photos), "--repeats", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("heap") for r in rows[:2]] == ["kept", "glibc default"]
    assert rows[-1]["cpu_default_over_kept"] > 0 and rows[-1]["peak_kept_over_default"] > 0
    assert bench.main(["--images", str(gallery / "nowhere")]) == 2


def test_text_batching_benchmark_gives_same_vectors_both_ways(tmp_path, capsys):
    from conftest import benchmark_module

    rows = [{"image": "x.jpg", "caption": " ".join(["word"] * (1 + i % 17))} for i in range(70)]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    bench = benchmark_module("text_batching", "s43")
    assert bench.main(["--pairs", str(tmp_path / "p.jsonl"), "--captions", "70", "--repeats", "1"]) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["max_abs_diff"] < 1e-5 and last["in_order_over_by_length"] > 0
    assert bench.main(["--pairs", str(tmp_path / "nowhere.jsonl")]) == 2
