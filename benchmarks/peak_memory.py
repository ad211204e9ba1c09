"""Peak resident memory of the main commands on the built-in models, as a user on a small machine runs them.

    python benchmarks/peak_memory.py [--photos 500] [--only index,search_text,...] [--out DIR]

Each command runs in a fresh interpreter (`python -m polymodal ...`, OMP_NUM_THREADS=1 unless set, a feature cache
of its own: the first, cold run) on real photos from ../shared/data: an index of --photos photos (Flickr8k dev photos
and the 80 full-size COCO photos), text and image searches of it, `eval retrieval` and `train contrastive` (1 epoch)
on Flickr8k pairs, `train vqa` (1 epoch) on the COCO yes/no questions, `caption` of 10 COCO photos, `export onnx`
of `default` (100 validation photos), of `easy-vqa` (150 COCO yes/no questions) and of `captioner` (100 validation
photos), and `serve` idle and after 15 requests. Prints one JSON line per command: its peak RSS (the kernel's
ru_maxrss of that process), seconds and the exact command.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402

COMMANDS = ("index", "search_text", "search_image", "eval_retrieval", "caption", "train_contrastive", "train_vqa",
            "export_onnx", "export_onnx_vqa", "export_onnx_captioner", "serve")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(data: Path, out: Path, photos: int) -> dict:
    """The photo folder (copies: an index does not follow links) and the pair and question files, image paths
    absolute. Flickr8k's first 200 photos train, the next 100 validate, the 100 after test."""
    flickr, coco = _rows(data / "flickr8k-dev" / "pairs.jsonl"), _rows(data / "coco-mini-train" / "pairs.jsonl")
    flickr_images = sorted({r["image"] for r in flickr})
    coco_images = sorted({r["image"] for r in coco})
    folder = out / "photos"
    folder.mkdir(exist_ok=True)
    for name in coco_images[:photos]:
        shutil.copy(data / "coco-mini-train" / name, folder / f"coco_{Path(name).name}")
    for name in flickr_images[: max(0, photos - len(coco_images))]:
        shutil.copy(data / "flickr8k-dev" / name, folder / Path(name).name)
    part = {"train": flickr_images[:200], "val": flickr_images[200:300], "test": flickr_images[300:400]}
    files = {k: _write(out / f"{k}.jsonl", [{"image": str(data / "flickr8k-dev" / r["image"]), "caption": r["caption"]}
                                             for r in flickr if r["image"] in set(v)]) for k, v in part.items()}
    qa = [{"image": str(data / "vqa-coco-yesno-train" / r["image"]), "question": r["question"], "answer": r["answer"]}
          for r in _rows(data / "vqa-coco-yesno-train" / "qa.jsonl")]
    files["qa_train"] = _write(out / "qa_train.jsonl", qa[:400])
    files["qa_val"] = _write(out / "qa_val.jsonl", qa[400:550])
    files["photos"] = folder
    # the photos captioned, searched with and sent to the server: from the data, not the index's folder, which
    # --photos can leave with fewer than 10 (none: --photos 0 crashed every command, even those that need no photo)
    files["coco"] = [data / "coco-mini-train" / name for name in coco_images[:10]]
    return files


def argvs(f: dict, out: Path) -> dict[str, list[str]]:
    db = str(out / "pics.idx")
    return {
        "index": ["index", str(f["photos"]), "--db", db, "--json"],
        "search_text": ["search", "--db", db, "a dog running on the grass", "-k", "10", "--json"],
        "search_image": ["search", "--db", db, "--image", str(f["coco"][0]), "-k", "10", "--json"],
        "eval_retrieval": ["eval", "retrieval", "--pairs", str(f["test"]), "--quiet"],
        "caption": ["caption", *map(str, f["coco"]), "--json"],
        "train_contrastive": ["train", "contrastive", "--pairs", str(f["train"]), "--val-pairs", str(f["val"]),
                              "--epochs", "1", "--batch-size", "64", "--out", str(out / "run-contrastive"), "--quiet",
                              "--overwrite"],
        "train_vqa": ["train", "vqa", "--qa", str(f["qa_train"]), "--val-qa", str(f["qa_val"]), "--epochs", "1",
                      "--batch-size", "64", "--out", str(out / "run-vqa"), "--quiet", "--overwrite"],
        "export_onnx": ["export", "onnx", "default", "--out", str(out / "onnx-default"), "--val-pairs", str(f["val"]),
                        "--val-limit", "100", "--json"],
        "export_onnx_vqa": ["export", "onnx", "easy-vqa", "--out", str(out / "onnx-vqa"), "--val-qa", str(f["qa_val"]),
                            "--json"],
        "export_onnx_captioner": ["export", "onnx", "captioner", "--out", str(out / "onnx-captioner"), "--val-pairs",
                                  str(f["val"]), "--val-limit", "100", "--json"],
        "serve": ["serve", "--db", db, "--caption-model", "captioner", "--port", str(_free_port())],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(out: Path) -> dict:
    env = {**os.environ, "POLYMODAL_CACHE": str(out / "cache"), "PYTHONPATH": str(ROOT)}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(argv: list[str], out: Path) -> dict:
    """One command in a fresh interpreter -> its peak RSS (ru_maxrss of that child alone), seconds and exit code."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "polymodal", *argv], env=_env(out), cwd=out,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    row = {"peak_rss_mb": round(usage.ru_maxrss / 1024), "seconds": round(time.perf_counter() - start, 1),
           "rc": child.returncode}
    return row if child.returncode == 0 else {**row, "error": err.strip().splitlines()[-1:]}


def _status_mb(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024) for k in ("VmRSS", "VmHWM")}


def _post(url: str, body: bytes, content_type: str) -> None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=120) as answer:
        answer.read()


def serve(argv: list[str], out: Path, photo: Path, requests: int = 5) -> dict:
    """`serve` idle (ready, 2 s later) and after ``requests`` rounds of a text search, an image search (upload)
    and a caption: VmRSS then, and the peak (VmHWM)."""
    port = argv[argv.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"
    child = subprocess.Popen([sys.executable, "-m", "polymodal", *argv], env=_env(out), cwd=out,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/readyz", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        else:
            return {"rc": child.poll(), "error": ["the server did not get ready in 120 s"]}
        time.sleep(2)
        idle = _status_mb(child.pid)
        image = photo.read_bytes()
        boundary = "polymodal-peak-memory"
        upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{photo.name}\"\r\n"
                  f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
        for _ in range(requests):
            _post(f"{url}/v1/search", json.dumps({"text": "a dog on the grass", "k": 10}).encode(), "application/json")
            _post(f"{url}/v1/search", upload, f"multipart/form-data; boundary={boundary}")
            _post(f"{url}/v1/caption", json.dumps({"images": [base64.b64encode(image).decode()]}).encode(),
                  "application/json")
        busy = _status_mb(child.pid)
        return {"idle_rss_mb": idle["VmRSS"], "requests": 3 * requests, "after_rss_mb": busy["VmRSS"],
                "peak_rss_mb": busy["VmHWM"], "rc": 0}
    finally:
        child.terminate()
        child.wait(timeout=60)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=500, help="photos in the index (default 500)")
    ap.add_argument("--only", default=",".join(COMMANDS), help=f"comma-separated subset of {', '.join(COMMANDS)}")
    ap.add_argument("--data", default=str(SHARED_DATA), help="the shared data folder (default ../shared/data)")
    ap.add_argument("--out", help="working folder, new (a second run there measures an index and feature caches "
                    "already made); default: a temporary one, deleted after")
    args = ap.parse_args(argv)
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(COMMANDS))
    if unknown:
        print(f"error: unknown commands {unknown}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if any(c in chosen for c in ("search_text", "search_image", "serve")) and "index" not in chosen:
        chosen.insert(0, "index")  # they search its index
    if args.photos < 0 or (args.photos == 0 and "index" in chosen):
        why = "the index (which search and serve use) needs 1 or more" if args.photos == 0 else "give 0 or more"
        print(f"error: --photos {args.photos}: {why}", file=sys.stderr)
        return 2
    data = Path(args.data)
    for need in ("flickr8k-dev/pairs.jsonl", "coco-mini-train/pairs.jsonl", "vqa-coco-yesno-train/qa.jsonl"):
        if not (data / need).is_file():
            print(f"error: this benchmark needs {data / need} (see ../shared/data/README.md)", file=sys.stderr)
            return 2
    announce(__file__)
    with tempfile.TemporaryDirectory(prefix="peak-memory-") as scratch:
        out = Path(args.out or scratch).resolve()
        out.mkdir(parents=True, exist_ok=True)
        files = prepare(data, out, args.photos)
        commands = argvs(files, out)
        for name in [c for c in COMMANDS if c in chosen]:
            row = serve(commands[name], out, files["coco"][0]) if name == "serve" else run(commands[name], out)
            print(json.dumps({"command": name, **row, "argv": "polymodal " + " ".join(commands[name])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
