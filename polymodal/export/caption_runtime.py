"""A captioner exported by `polymodal export onnx` (prefix and step graphs), run by onnxruntime with numpy
preprocessing and no torch import: caption() like the PyTorch Captioner, through the same beam search."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from polymodal.export.graph_runtime import GraphExport
from polymodal.export.runtime import export_tokenizer, onnx_session, return_freed_memory, shrink_arena
from polymodal.models.beam_search import CLS, NO_REPEAT, beam_search, caption_batches, caption_text
from polymodal.models.inputs import as_images


class OnnxCaptioner(GraphExport):
    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        folder = Path(folder)
        super().__init__(folder, threads)
        self.prefix = onnx_session(folder / self.files["prefix"], threads, {"pixels"})
        self.step = onnx_session(folder / self.files["step"], threads, {"ids", "position", "keys", "values"})
        self.tokenizer = export_tokenizer(folder / self.config["tokenizer"])

    def _prefix(self, images: Sequence[Any], options=None) -> tuple[np.ndarray, np.ndarray]:
        return self.prefix.run(None, {"pixels": self.transform(list(images))}, options)

    def _logits(self, ids: np.ndarray, keys: np.ndarray, values: np.ndarray, options=None):
        position = np.array([ids.shape[1] - 1], dtype=np.int64)
        return self.step.run(None, {"ids": ids[:, -1:], "position": position, "keys": keys, "values": values},
                             options)

    def first_logits(self, images: Sequence[Any], options=None) -> np.ndarray:
        """The logits of each photo's first word (the export's parity check); ``options``: onnxruntime RunOptions."""
        keys, values = self._prefix(as_images(images), options)
        return self._logits(np.full((keys.shape[1], 1), CLS, dtype=np.int64), keys, values, options)[0]

    def release_memory(self, image: Any) -> None:
        """Give back the memory both graphs' runs keep for the next one (onnxruntime keeps a session's arena at its
        largest batch's size): a first step for one photo that shrinks the arenas after it. The export checks its
        int8 step graph while the fp32 graphs' arenas would otherwise live beside the variant's."""
        self.first_logits([image], shrink_arena())
        return_freed_memory()

    def caption(self, images: Any, beam: int = 3, max_tokens: int = 20, batch_size: int = 16,
                no_repeat: int = NO_REPEAT) -> list[str]:
        """An image or images (paths, PIL images, arrays) -> one caption each, the same whatever else is in the call."""

        def pieces_of(batch: list, beam: int, max_tokens: int, no_repeat: int) -> list[list[int]]:
            keys, values = (np.repeat(a, beam, axis=1) for a in self._prefix(batch))
            state = {"keys": keys, "values": values}

            def step(ids: np.ndarray, origin: np.ndarray) -> np.ndarray:
                logits, state["keys"], state["values"] = self._logits(ids, state["keys"][:, origin],
                                                                      state["values"][:, origin])
                return logits

            return beam_search(step, len(batch), beam, max_tokens, no_repeat=no_repeat)

        # int8 dynamic quantisation scales activations per batch: photos captioned together would write other
        # captions than each alone (6 of 12 Flickr8k photos did), so an int8 step graph decodes one photo at a time
        alone = self.variants["step"] != "fp32"
        return caption_batches(images, 1 if alone else batch_size, beam, max_tokens, no_repeat, pieces_of,
                               lambda pieces: caption_text(self.tokenizer.decode(pieces)), owner=self)

    def __repr__(self) -> str:
        return f"OnnxCaptioner({self.key}, step={self.files['step']})"
