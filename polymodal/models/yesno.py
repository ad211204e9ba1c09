"""YesNoModel (`coco-yesno`): yes/no questions about photos, answered by image-text alignment, not by a fusion net.

    question -> key phrase by rules ("Is this man wearing a hat?" -> "wearing a hat", "Could this be zoo?" -> "zoo",
                "Are there any clouds in the sky?" -> "clouds in the sky"; see question_to_statement)
    image    -> the `default` dual encoder's image embedding and the ConSE embedding of its ImageNet classes
    key      -> the `default` text embedding (its space) and the plain MiniLM embedding (ConSE's space)

Four alignment features, each a z-score of the image-phrase cosine s = i.t against a reference pool, so that what
counts is how much *more* this image matches the phrase than other images do (and the phrase than other phrases):
    image-pool z = (s - mean_j i_j.t) / std_j i_j.t     over the training images j   (default and ConSE spaces)
    text-pool  z = (s - mean_k i.t_k) / std_k i.t_k     over the training key phrases k (default and ConSE spaces)
A linear projection's mean and standard deviation over a pool need only the pool's mean and covariance, so those
(4 x 384 + 4 x 384 x 384, stored as float16) are all that is kept of the training data. A logistic regression over
the four z-scores plus the MiniLM question embedding (which carries question-type priors) gives p(yes).

Only this small part is saved (config.json + model.safetensors, about 1.2 MB); the towers and heads come from the
installed packages and the built-in `default` model. Accuracy on held-out COCO yes/no questions is modest (about
0.57 in 5-fold image-disjoint cross-validation, majority 0.52): see benchmarks/coco_yesno.py.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from polymodal.models.folders import folder_version, read_folder_config, read_weights, write_model_folder
from polymodal.models.yesno_base import check_fit_base
from polymodal.errors import PolymodalError
from polymodal.data.answers import YES_NO, checked_choices, comparable_answer, unique_choices
from polymodal.models.fusion_encoder import _dedupe, choice_rows
from polymodal.models.inputs import as_images, as_texts, check_count, one_question, vqa_rows
from polymodal.models.modes import evaluating
from polymodal.models.not_finite import finite_answer, finite_ranking, finite_rows

log = logging.getLogger(__name__)

MODEL_TYPE = "yesno"
FEATURES = ("z_image_default", "z_text_default", "z_image_conse", "z_text_conse")
SPACES = ("default", "conse")  # image embedding spaces; the key phrase is embedded in the matching text space
DIM = 384

_SUBJECTS = r"(man|woman|person|guy|gentleman|lady|boy|girl|child|kid|people|men|women|player|skier|surfer|dog|cat)"
_GENERIC_PLACE = re.compile(r"\s+(in|on)\s+(the|this|that)\s+(picture|photo|photograph|image|pic|scene|shot)$"
                            r"|\s+(here|in sight|visible|shown|pictured)$")
_AUX = r"(is|are|was|were|does|do|did|can|could|will|would|has|have|should)"
# "Isn't there a dog?" asks what "Is there a dog?" asks (yes: there is one): read as that
_NEGATED_AUX = re.compile(rf"^(?:{_AUX}n['’]?t|(ca)n['’]?t|cannot|(wo)n['’]?t)\b")


def _unnegated(question: str) -> str:
    """A lower-case question with a leading negated auxiliary (isn't, doesn't, can't, won't) made positive."""
    m = _NEGATED_AUX.match(question)
    if m is None:
        return question
    aux = m.group(1) or ("can" if m.group(2) or m.group(0) == "cannot" else "will")
    return aux + question[m.end():]


def question_to_statement(question: str) -> tuple[str, str]:
    """A yes/no question -> (statement, key phrase), both lower case; the key phrase is what the image is scored
    against. 'Is this man wearing a hat?' -> ('a man wearing a hat', 'wearing a hat'); 'Is there a dog?' ->
    ('a photo with a dog', 'a dog'); 'Could this be zoo?' -> ('a photo of a zoo', 'zoo')."""
    q = _unnegated(" ".join(str(question).strip().rstrip("?.! ").split()).lower())
    q = re.sub(r"\bany\s+any\b", "any", q)
    if not q:
        raise PolymodalError("the question is empty; ask a yes/no question about the image")
    m = re.match(r"(?:is|are) (?:this|that|it|these|those) (?:an?|the) (.+)$", q)
    if m:
        return f"a photo of a {m.group(1)}", m.group(1)
    m = re.match(r"(?:could|can|might|would) (?:this|that|it|these) be (?:(an?|the) )?(.+)$", q)
    if m:
        return f"a photo of {m.group(1) or 'a'} {m.group(2)}", m.group(2)
    m = re.match(r"(?:is|are) there (?:(any|some) )?(.+)$", q)
    if m:
        body = _GENERIC_PLACE.sub("", m.group(2)).strip() or m.group(2)
        return f"a photo with {body}", body
    m = re.match(rf"(?:is|are) (?:this|that|the) {_SUBJECTS} (.+)$", q)
    if m:
        subject, predicate = m.group(1), m.group(2)
        if re.match(r"(an?|the) ", predicate):
            return f"the {subject} is {predicate}", predicate
        return f"a {subject} {predicate}", predicate
    m = re.match(r"(?:is|are) (?:this|that|these|those|it) (.+)$", q)
    if m:
        return f"a photo of something {m.group(1)}", m.group(1)
    m = re.match(rf"{_AUX} (?:the |this |these |that |those )?(.+)$", q)
    if m:
        return m.group(2), m.group(2)
    return q, q


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def pool_stats(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and population covariance [D, D] of a pool of vectors, rounded to float16 (what is saved)."""
    vectors = np.asarray(vectors, np.float64)
    mean = vectors.mean(0)
    cov = (vectors - mean).T @ (vectors - mean) / max(1, len(vectors))
    return mean.astype(np.float16).astype(np.float32), cov.astype(np.float16).astype(np.float32)


def _z(s: np.ndarray, other: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """z-score of s = a.b where `other` is b (or a) and the pool varies the other side: (s - other.mean) / sqrt(other^T cov other)."""
    var = np.einsum("nd,de,ne->n", other, cov, other)
    return (s - other @ mean) / np.sqrt(np.maximum(var, 1e-8))


class YesNoModel:
    """p(yes | image, question) = sigmoid(w . [4 alignment z-scores, MiniLM question embedding] + b).

    ``stats``: for each space, ``image_mean``/``image_cov`` (training images) and ``text_mean``/``text_cov``
    (training key phrases); ``coef`` [4 + 384], ``intercept`` [1]. ``base`` is the loaded `default` dual encoder."""

    answers = list(YES_NO)

    def __init__(self, state: dict[str, np.ndarray], config: dict | None = None, base=None) -> None:
        self.config = dict(config or {})
        self.config.setdefault("base", "default")
        self.state = {k: np.asarray(v, np.float32) for k, v in state.items()}
        expected = {f"{space}_{part}" for space in SPACES for part in ("image_mean", "image_cov", "text_mean", "text_cov")}
        expected |= {"coef", "intercept"}
        if set(self.state) != expected:
            raise PolymodalError(f"a yes/no model needs the arrays {sorted(expected)}; got {sorted(self.state)}")
        if self.state["coef"].shape != (len(FEATURES) + DIM,):
            raise PolymodalError(f"coef must have {len(FEATURES) + DIM} values, got shape {self.state['coef'].shape}")
        self.name = self.config.get("name", "coco-yesno")
        self.version = self.config.get("version", "untrained")
        self._base = base
        self._base_lock = threading.Lock()  # threads answering at once on a fresh model load the base once

    def __getstate__(self) -> dict:  # a lock cannot be copied or pickled (copy.deepcopy(model) worked before it)
        return {k: v for k, v in self.__dict__.items() if k != "_base_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._base_lock = threading.Lock()

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def __repr__(self) -> str:
        return f"YesNoModel({self.key}, answers yes/no, base={self.config['base']})"

    # -- the towers ---------------------------------------------------------------------------------------
    @property
    def base(self):
        with self._base_lock:
            if self._base is None:
                self._base = load_base(self.config["base"])
        return self._base

    @property
    def transform(self):
        """The image transform of the embedding model it scores with (how the server decodes uploads for it)."""
        return self.base.transform

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Any], batch_size: int = 32) -> dict[str, np.ndarray]:
        """An image or images (paths / PIL images / arrays) -> {"default": [N, 384], "conse": [N, 384]}, rows
        L2-normalised."""
        from polymodal.models.conse import conse_embedding

        images, batch_size = as_images(images), check_count(batch_size, "batch_size")  # one path is one image
        base = self.base
        out: dict[str, list] = {space: [np.zeros((0, DIM), np.float32)] for space in SPACES}
        with evaluating(base):  # the base's heads have dropout: off, however the caller left the base
            for i in range(0, len(images), batch_size):
                pixels = torch.from_numpy(base.transform(list(images[i : i + batch_size])))
                pooled = base.image_tower.pooled(pixels).float()
                out["default"].append(_normalize(base.image_from_cache(pooled).numpy()))
                out["conse"].append(_normalize(conse_embedding(base.image_tower.net._fc(pooled),
                                                               base.class_matrix).numpy()))
        return {space: np.concatenate(v) for space, v in out.items()}

    @torch.inference_mode()
    def encode_questions(self, questions: Sequence[str], batch_size: int = 128) -> dict[str, np.ndarray]:
        """Questions -> {"question": MiniLM [N, 384], "default": key phrase in the default space, "conse": key phrase
        in MiniLM space (ConSE's)}, rows L2-normalised; one string is one question."""
        questions, batch_size = as_texts(questions, "questions"), check_count(batch_size, "batch_size")
        keys = [question_to_statement(q)[1] for q in questions]
        base = self.base
        q_raw, k_raw, k_def = [np.zeros((0, DIM), np.float32)], [np.zeros((0, DIM), np.float32)], [np.zeros((0, DIM), np.float32)]
        with evaluating(base):
            for i in range(0, len(keys), batch_size):
                q_raw.append(_normalize(base.text_tower([str(q) for q in questions[i : i + batch_size]]).numpy()))
                raw = base.text_tower(keys[i : i + batch_size])
                k_raw.append(_normalize(raw.numpy()))
                k_def.append(_normalize(base.text_head(raw).numpy()))
        return {"question": np.concatenate(q_raw), "default": np.concatenate(k_def), "conse": np.concatenate(k_raw)}

    # -- features and probabilities -------------------------------------------------------------------------
    def features(self, image_emb: dict, question_emb: dict, row_image: Sequence[int], row_question: Sequence[int] | None = None) -> np.ndarray:
        """-> [R, 4 + 384]: the z-scores (FEATURES order) then the question embedding, one row per (image, question)."""
        return row_features(self.state, image_emb, question_emb, row_image, row_question)

    def probabilities(self, image_emb: dict, question_emb: dict, row_image, row_question=None) -> np.ndarray:
        x = self.features(image_emb, question_emb, row_image, row_question)
        logit = x @ self.state["coef"] + self.state["intercept"][0]
        return 1.0 / (1.0 + np.exp(-logit))

    @finite_rows
    def predict(self, images: Sequence[Any], questions: Sequence[str], batch_size: int = 32) -> list[tuple[str, float]]:
        """One (answer, probability of that answer) per (image, question) row; each distinct image and question is
        encoded once. NaN scores: as FusionEncoder.predict."""
        images, questions = vqa_rows(images, questions)
        batch_size = check_count(batch_size, "batch_size")
        if not questions:
            return []
        img_list, row_image = _dedupe(images)
        q_list, row_question = _dedupe(questions)
        p = self.probabilities(self.encode_images(img_list, batch_size), self.encode_questions(q_list),
                               row_image, row_question)
        return [("yes", float(v)) if v >= 0.5 else ("no", float(1 - v)) for v in p]

    def answer(self, image: Any, question: str, choices: Sequence[str] | None = None, top_k: int = 3) -> dict:
        """-> ``{"answer", "score", "alternatives": [(answer, score), ...]}`` like FusionEncoder.answer. The model only
        answers yes or no; with ``choices``, yes/no among them are ranked (other candidates score 0.0)."""
        question = one_question(question, "ask a yes/no question about the image")
        top_k = check_count(top_k, "top_k")
        if not re.match(rf"{_AUX}\b|(am|may|might)\b", _unnegated(question.strip().lower())):
            log.warning("%s answers only yes or no; %r does not read like a yes/no question (is/are/can/does ...)",
                        self.name, question)
        choices = checked_choices(choices, self.check_choices)  # before the image is read
        p_yes = float(self.probabilities(self.encode_images([image]), self.encode_questions([question]), [0])[0])
        if choices is None:
            ranked = sorted({"yes": p_yes, "no": 1.0 - p_yes}.items(), key=lambda kv: -kv[1])
        else:
            ranked = self._rank_choices(p_yes, choices)
        top = ranked[:top_k]
        return finite_answer({"answer": top[0][0], "score": top[0][1], "alternatives": top})

    @finite_rows
    def predict_choices(self, images: Sequence[Any], questions: Sequence[str], choices: Sequence[Sequence[str]],
                        batch_size: int = 32) -> list[tuple[str, float]]:
        """Multiple choice over rows: the best of each row's candidates and its score, as answer(..., choices=...)."""
        choices, img_list, row_image, q_list, row_question = choice_rows(images, questions, choices, self.check_choices)
        if not choices:
            return []
        p_yes = self.probabilities(self.encode_images(img_list, check_count(batch_size, "batch_size")),
                                   self.encode_questions(q_list), row_image, row_question)
        return [self._rank_choices(float(p), c)[0] for p, c in zip(p_yes, choices)]

    def check_choices(self, choices: Sequence[str]) -> tuple[dict[str, str], str]:
        """(unique_choices(choices), a warning naming those other than yes and no, which score 0.0, or ""); one
        error when neither yes nor no is among them."""
        seen = unique_choices(choices)
        if not set(seen) & set(YES_NO):
            raise PolymodalError(f"{self.name} answers only yes or no, and none of the choices "
                                 f"({', '.join(seen.values())}) is; pass yes and/or no")
        others = [v for k, v in seen.items() if k not in YES_NO]
        return seen, f"{self.name} answers only yes or no; these choices score 0: {', '.join(others)}" if others else ""

    def _rank_choices(self, p_yes: float, choices: Sequence[str]) -> list[tuple[str, float]]:
        scores = {"yes": p_yes, "no": 1.0 - p_yes}
        seen = self.check_choices(choices)[0]
        return finite_ranking(sorted(((seen[k], scores.get(k, 0.0)) for k in seen), key=lambda kv: -kv[1]),
                              math.isfinite(p_yes))

    draws_heat_maps = False  # explain() is only there to say why: the CLI refuses --explain before answering

    def explain(self, image: Any, question: str, answer: str | None = None) -> np.ndarray:
        """Refused: this model scores the whole image against the question, so it has no heat map. Only Python
        reaches it (the CLI refuses --explain first), so the advice is Python's."""
        raise PolymodalError(f"{self.name} scores the whole image against the question and has no heat map; for "
                             "one, ask a fusion encoder (polymodal.load('easy-vqa').explain(image, question), or a "
                             "`polymodal train vqa` model's), or map a phrase with an embedding model: "
                             "polymodal.apps.explain.occlusion_heat(model, image, model.encode_text([phrase])[0])")

    # -- saving ---------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write config.json + model.safetensors atomically (covariances as float16); returns the folder."""
        from safetensors.numpy import save as save_bytes

        folder = Path(folder)
        arrays = {k: (v.astype(np.float16) if k.endswith("_cov") else v.astype(np.float32)) for k, v in self.state.items()}
        data = save_bytes(arrays)
        self.version = hashlib.sha256(data).hexdigest()[:12]
        config = {**self.config, "type": MODEL_TYPE, "version": self.version, "name": self.name,
                  "features": list(FEATURES) + ["question_embedding[384]"]}
        if "base_version" not in config and getattr(self, "loaded_from", None) is None:
            # fit in this process, over the base it holds: load_yesno refuses the folder once that base is re-shipped
            if (fit_on := getattr(self.base, "version", None)) is not None:
                config["base_version"] = str(fit_on)
        self.config = config
        return write_model_folder(folder, data, config, getattr(self, "loaded_from", None))


def row_features(state: dict, image_emb: dict, question_emb: dict, row_image, row_question=None) -> np.ndarray:
    row_image = np.asarray(row_image, dtype=np.int64)
    row_question = np.arange(len(row_image)) if row_question is None else np.asarray(row_question, dtype=np.int64)
    cols = []
    for space in SPACES:
        img, txt = image_emb[space][row_image], question_emb[space][row_question]
        s = np.einsum("nd,nd->n", img, txt)
        cols.append(_z(s, txt, state[f"{space}_image_mean"], state[f"{space}_image_cov"]))  # vs other images
        cols.append(_z(s, img, state[f"{space}_text_mean"], state[f"{space}_text_cov"]))  # vs other phrases
    z = np.stack([cols[0], cols[1], cols[2], cols[3]], 1)  # FEATURES order
    return np.hstack([z, question_emb["question"][row_question]]).astype(np.float32)


def fit_state(image_emb: dict, question_emb: dict, row_image, answers: Sequence[str], C: float = 0.3) -> dict:
    """Pool statistics from the given (training) images and distinct key phrases, then a logistic regression on
    the rows. ``answers`` are 'yes'/'no'."""
    from sklearn.linear_model import LogisticRegression

    row_image = np.asarray(row_image, dtype=np.int64)
    y = np.array([comparable_answer(a) == "yes" for a in answers], dtype=np.int64)  # 'Yes!' too, as scored
    bad = [a for a in answers if comparable_answer(a) not in YES_NO]
    if bad:
        raise PolymodalError(f"a yes/no model trains on yes/no answers only; got {bad[0]!r}")
    if len(set(y.tolist())) < 2:
        raise PolymodalError("the training rows need both yes and no answers")
    used = np.unique(row_image)
    state: dict[str, np.ndarray] = {}
    for space in SPACES:
        state[f"{space}_image_mean"], state[f"{space}_image_cov"] = pool_stats(image_emb[space][used])
        phrases = np.unique(question_emb[space].round(5), axis=0)
        state[f"{space}_text_mean"], state[f"{space}_text_cov"] = pool_stats(phrases)
    state["coef"] = np.zeros(len(FEATURES) + DIM, np.float32)
    state["intercept"] = np.zeros(1, np.float32)
    x = row_features(state, image_emb, question_emb, row_image)
    clf = LogisticRegression(C=C, max_iter=5000).fit(x, y)
    state["coef"] = clf.coef_[0].astype(np.float32)
    state["intercept"] = clf.intercept_.astype(np.float32)
    return state


def train_yesno(images: Sequence[Any], questions: Sequence[str], answers: Sequence[str], C: float = 0.3,
                base=None, name: str = "coco-yesno") -> YesNoModel:
    """Fit a YesNoModel on (image, question, yes/no answer) rows (images: paths, PIL images or arrays)."""
    if not (len(images) == len(questions) == len(answers)) or not len(images):
        raise PolymodalError("pass the same positive number of images, questions and answers")
    model = YesNoModel(_empty_state(), {"name": name, "C": C}, base=base)
    img_list, row_image = _dedupe(images)
    image_emb = model.encode_images(img_list)
    question_emb = model.encode_questions([str(q) for q in questions])
    model.state = fit_state(image_emb, question_emb, row_image, answers, C)
    model.config["n_train"] = len(answers)
    return model


def _empty_state() -> dict:
    state = {}
    for space in SPACES:
        state.update({f"{space}_image_mean": np.zeros(DIM), f"{space}_image_cov": np.eye(DIM),
                      f"{space}_text_mean": np.zeros(DIM), f"{space}_text_cov": np.eye(DIM)})
    return {**state, "coef": np.zeros(len(FEATURES) + DIM), "intercept": np.zeros(1)}


def load_base(name: str):
    """The built-in dual encoder whose towers and heads the yes/no model scores with."""
    from polymodal.models.dual_encoder import load_dual_encoder
    from polymodal.resources import HERE

    folder = HERE / "models" / str(name)
    if not (folder / "config.json").is_file():
        raise PolymodalError(f"the yes/no model needs the built-in model {name!r}, not installed at {folder}; "
                             "reinstall polymodal")
    base = load_dual_encoder(folder)
    if getattr(base, "config", None) is None or base.config.image_head != "conse_residual" or base.dim != DIM:
        raise PolymodalError(f"the yes/no model needs a conse_residual dual encoder with {DIM}-d embeddings as base")
    return base


def load_yesno(folder: str | Path, base=None) -> YesNoModel:
    from safetensors.numpy import load_file

    folder = Path(folder)
    config = read_folder_config(folder, "YesNoModel.save")
    if not isinstance(config, dict) or config.get("type") != MODEL_TYPE:
        raise PolymodalError(f"{folder} holds a {config.get('type', 'unknown') if isinstance(config, dict) else 'unknown'!r} "
                             "model, not a yes/no model")
    state = read_weights(folder, load_file)
    version = folder_version(folder, config)
    check_fit_base(folder, config, version, base)
    model = YesNoModel(state, {**config, "version": version}, base=base)
    model.loaded_from = folder  # its save() carries the folder's training photos
    return model
