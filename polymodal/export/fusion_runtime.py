"""A VQA fusion encoder exported by `polymodal export onnx` (grid, question and head graphs), run by onnxruntime with
numpy preprocessing and no torch import: answer(), predict() and logits() like the PyTorch FusionEncoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from polymodal.data.answers import check_row_choices, checked_choices, choice_index, comparable_answer, unique_choices
from polymodal.data.tokenizer import FastTokenizer
from polymodal.errors import PolymodalError
from polymodal.export.graph_runtime import GraphExport
from polymodal.export.runtime import export_tokenizer, onnx_session, return_freed_memory, shrink_arena
from polymodal.models.beam_search import log_softmax
from polymodal.models.inputs import check_count, one_question, vqa_rows
from polymodal.models.not_finite import finite_answer, finite_ranking, finite_rows


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x))).astype(np.float32)


class OnnxFusionEncoder(GraphExport):
    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        folder = Path(folder)
        super().__init__(folder, threads)
        config, files = self.config, self.files
        self.answers = list(config["answers"])
        self.answer_index = choice_index(self.answers)  # keyed as unique_choices keys the choices
        self.grid = onnx_session(folder / files["grid"], threads, {"pixels"})
        self.question = onnx_session(folder / files["question"], threads, {"input_ids"})
        self.head = onnx_session(folder / files["head"], threads, {"grid", "states", "attention_mask"})
        # the ITM head, where the model has one: it scores multiple-choice candidates outside the answers
        self.match = onnx_session(folder / files["match"], threads, {"grid", "states", "attention_mask"}) \
            if "match" in files else None
        self.max_length = int(config["max_length"])
        self.tokenizer = FastTokenizer(export_tokenizer(folder / config["tokenizer"]), self.max_length,
                                       config["pad_id"], config["pad_token"])

    def __repr__(self) -> str:
        variants = self.variants  # the graphs an export may serve as int8 (fusion_export.TOWER_VARIANTS)
        return f"OnnxFusionEncoder({self.key}, grid={variants['grid']}, question={variants['question']})"

    def logits(self, images: Sequence[Any], questions: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """``[R, A]`` answer logits, one row per (image, question)."""
        out = [np.zeros((0, len(self.answers)), np.float32)]
        out += [logits for _, logits in self._batches(images, questions, batch_size)]
        return np.concatenate(out)

    def _batches(self, images: Sequence[Any], questions: Sequence[str], batch_size: int, options=None):
        """-> (grid tokens, answer logits) of each batch of rows: multiple choice reuses a row's grid. ``options``:
        onnxruntime RunOptions for every graph's run."""
        images, questions = vqa_rows(images, questions)  # one image or question string is one row
        batch_size = check_count(batch_size, "batch_size")
        for i in range(0, len(images), batch_size):
            pixels = self.transform(list(images[i : i + batch_size]))
            grid = self.grid.run(None, {"pixels": pixels}, options)[0]
            tokens = self.tokenizer([str(q) for q in questions[i : i + batch_size]])
            states = self.question.run(None, tokens, options)[0]
            yield grid, self.head.run(None, {"grid": grid, "states": states,
                                             "attention_mask": tokens["attention_mask"]}, options)[0]

    def release_memory(self, image: Any, question: str) -> None:
        """Give back the memory each graph's runs keep for the next one (onnxruntime keeps a session's arena at its
        largest batch's size): a run of one row that shrinks the arenas after it. The export checks a variant while
        the fp32 graphs' arenas would otherwise live beside the variant's."""
        grid, _ = next(self._batches([image], [question], 1, shrink_arena()))
        if self.match is not None:
            self._match(grid, [str(question)], shrink_arena())
        return_freed_memory()

    def match_scores(self, images: Sequence[Any], texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """``[R]`` ITM match probabilities of each (image, text) row (needs a model exported with an ITM head)."""
        if self.match is None:
            raise PolymodalError(f"model {self.name!r} was exported without an ITM head; it cannot score image-text "
                                 "matches")
        images, texts = vqa_rows(images, texts)
        batch_size = check_count(batch_size, "batch_size")
        out = [np.zeros(0, np.float32)]
        for i in range(0, len(images), batch_size):
            grid = self.grid.run(None, {"pixels": self.transform(list(images[i : i + batch_size]))})[0]
            out.append(self._match(grid, [str(t) for t in texts[i : i + batch_size]]))
        return np.concatenate(out)

    def _match(self, grid: np.ndarray, texts: list[str], options=None) -> np.ndarray:
        """Grid tokens (one row per text, or one row that every text shares) + texts -> match probabilities."""
        if not texts:
            return np.zeros(0, np.float32)
        tokens = self.tokenizer(texts)
        states = self.question.run(None, tokens, options)[0]
        grid = np.repeat(grid, len(texts), 0) if len(grid) == 1 else grid
        logits = self.match.run(None, {"grid": grid, "states": states, "attention_mask": tokens["attention_mask"]},
                                options)[0]
        return _sigmoid(logits)

    @finite_rows  # every row NaN: one error, as the PyTorch model's predict() (a row's answer was the first)
    def predict(self, images: Sequence[Any], questions: Sequence[str], batch_size: int = 32) -> list[tuple[str, float]]:
        probs = _softmax(self.logits(images, questions, batch_size))
        return [(self.answers[int(i)], float(p[i])) for p, i in zip(probs, probs.argmax(1))]

    def answer(self, image: Any, question: str, choices: Sequence[str] | None = None, top_k: int = 3) -> dict:
        """-> {"answer", "score", "alternatives"}; with ``choices``, only those compete (see _rank_choices)."""
        question, top_k = one_question(question), check_count(top_k, "top_k")
        self.tokenizer.warn_if_question_cut(question, f"max_question_tokens={self.max_length}")
        choices = checked_choices(choices, self.check_choices)  # before the image is read
        grid, logits = next(self._batches([image], [question], 1))
        if choices is None:
            probs = _softmax(logits[0])
            order = np.argsort(-probs)[:top_k]
            ranked = [(self.answers[int(i)], float(probs[i])) for i in order]
        else:
            ranked = self._rank_choices(logits[0], choices, grid, question)[:top_k]
        return finite_answer({"answer": ranked[0][0], "score": ranked[0][1], "alternatives": ranked})

    heat_map_method = "occlusion"  # how explain() makes its maps, as a saved map's strip names it

    def explain(self, image: Any, question: str, answer: str | None = None) -> np.ndarray:
        """A ``[g, g]`` (7x7) float32 heat map in [0, 1] over the image grid: where the photo made ``answer`` (the
        top answer by default) likely. An export keeps no attention maps or gradients, so this is `occlusion_map` of
        the answer's probability, or for an answer outside the vocabulary of the match graph's for "QUESTION ANSWER"
        (as a choice is scored): 36 more passes of the grid graph."""
        from polymodal.apps.explain import occlusion_map

        question = one_question(question)
        key = None if answer is None else comparable_answer(answer)
        by_itm = key is not None and key not in self.answer_index
        if by_itm and self.match is None:
            raise PolymodalError(f"{answer!r} is not among {self.name!r}'s answers and it was exported without an ITM "
                                 "head to score it; explain one of its answers")
        tokens = self.tokenizer([self.tokenizer.question_with_answer(question, answer, "the answer") if by_itm
                                 else question])
        states = self.question.run(None, tokens)[0]

        def run(graph, grid: np.ndarray) -> np.ndarray:  # one question's states beside each (occluded) photo
            n = len(grid)
            return graph.run(None, {"grid": grid, "states": np.repeat(states, n, 0),
                                    "attention_mask": np.repeat(tokens["attention_mask"], n, 0)})[0]

        pixels = self.transform([image])
        grid = self.grid.run(None, {"pixels": pixels})[0]
        side = int(round(grid.shape[1] ** 0.5))  # the grid graph's tokens: side x side cells
        if by_itm:
            def score(p):
                return _sigmoid(run(self.match, self.grid.run(None, {"pixels": p})[0]).reshape(-1))
        else:
            index = int(run(self.head, grid)[0].argmax()) if key is None else self.answer_index[key]

            def score(p):  # log-probability: a confident answer's probability barely moves (0.999 -> 0.99)
                return log_softmax(run(self.head, self.grid.run(None, {"pixels": p})[0]))[:, index]
        heat = occlusion_map(pixels, score, grid=side)
        top = float(heat.max())
        return (heat / top if top > 0 else heat).astype(np.float32)

    @finite_rows
    def predict_choices(self, images: Sequence[Any], questions: Sequence[str], choices: Sequence[Sequence[str]],
                        batch_size: int = 32) -> list[tuple[str, float]]:
        """Multiple choice over rows: the best of each row's candidates and its score, as answer(..., choices=...)."""
        images, questions = vqa_rows(images, questions)
        choices = check_row_choices(choices, len(questions), self.check_choices)
        out: list[tuple[str, float]] = []
        for grid, logits in self._batches(images, questions, batch_size):
            for j, row in enumerate(logits):
                k = len(out)
                out.append(self._rank_choices(row, choices[k], grid[j : j + 1], questions[k])[0])
        return out

    def check_choices(self, choices: Sequence[str]) -> tuple[dict[str, str], str]:
        """(unique_choices(choices), a warning naming those outside the vocabulary, which score 0.0 as they do in a
        PyTorch model without an ITM head, or ""); one error when none is in the vocabulary. With an ITM head (the
        match graph) every choice can be scored: no warning, no error."""
        seen = unique_choices(choices)
        if self.match is not None:
            return seen, ""
        outside = [seen[c] for c in seen if c not in self.answer_index]
        if len(outside) == len(seen):
            raise PolymodalError(f"model {self.name!r} knows none of the choices ({', '.join(outside)}) and was "
                                 "exported without an ITM head to score other answers: pass answers it knows, e.g. "
                                 + ", ".join(self.answers[:10]))
        return seen, (f"{self.name} (ONNX) has no ITM head to score choices outside its answers; these score 0: "
                      f"{', '.join(outside)}" if outside else "")

    def _rank_choices(self, logits: np.ndarray, choices: Sequence[str], grid: np.ndarray,
                      question: str) -> list[tuple[str, float]]:
        """The candidates ranked as the PyTorch model ranks them: by the logits restricted to them (softmax over
        the candidates) when all of two or more are known, else known ones by their full-vocabulary probability and
        the others by the match graph's probability for "QUESTION CHOICE" (0.0 without one)."""
        seen = self.check_choices(choices)[0]
        outside = [c for c in seen if c not in self.answer_index]
        if not outside and len(seen) > 1:
            scores = dict(zip(seen, _softmax(logits[[self.answer_index[c] for c in seen]])))
        else:  # a lone known choice too: a softmax over one says 1.0 whatever the photo
            probs = _softmax(logits)
            scores = {c: probs[self.answer_index[c]] for c in seen if c in self.answer_index}
            if outside and self.match is not None:
                texts = [self.tokenizer.question_with_answer(question, seen[c]) for c in outside]  # answer kept whole
                scores.update(zip(outside, self._match(grid, texts)))
            else:
                scores.update({c: 0.0 for c in outside})
        return finite_ranking(sorted(((seen[c], float(scores[c])) for c in seen), key=lambda t: -t[1]),
                              bool(np.isfinite(logits).all()))
