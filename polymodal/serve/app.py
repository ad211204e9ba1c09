"""The HTTP service: create_app(model, db) -> a FastAPI app. Needs the `serve` extra (FastAPI, python-multipart).

    from polymodal.serve import create_app
    app = create_app("lite", "pics.idx", api_key=None)       # then: uvicorn.run(app, host="127.0.0.1")

Without an API key the app answers only Host names DNS rebinding cannot take (localhost, IP addresses, this
machine's names, ServeSettings(allowed_hosts=...)): in tests, Starlette's TestClient (which calls the server
"testserver") needs TestClient(app, base_url="http://localhost").

Endpoints (JSON in, JSON out; every user error is a 4xx {"error": "..."}):
  POST /v1/embed     {"texts": [...]} | {"images": [base64, ...]} | multipart `image` file(s)  -> vectors
  POST /v1/search    {"text": "...", "k": 10} | {"image": base64, "k": 10} | {"like": id, "k": 10} | multipart
                     `image` + `k`  -> hits
  POST /v1/classify  multipart `image` + `labels` (comma-separated) | {"image": base64, "labels": [...]}
  POST /v1/vqa       multipart `image` + `question` (+ `choices`, comma-separated)
                     | {"image": base64, "question": "...", "choices": [...]}  (with a VQA model)
                     -> {"answer": {...}, "warnings": [what the model noted, e.g. a question it cut short]}
  POST /v1/index     multipart `image` file(s) to add | {"remove": [ids]}
  GET  /v1/thumb/{id}  a JPEG thumbnail of an indexed image;  GET /v1/info;  GET /healthz;  GET /readyz;
  GET  /metrics;  GET /docs
  GET  /             the web page
Multipart text fields are strings, so a list there is comma-separated; a JSON list is taken as given (one item
each, commas and all). Over --timeout: 503 (408 while the body is still arriving).
"""

# no `from __future__ import annotations`: FastAPI must see the real Request class of the locally imported fastapi

import base64
import binascii
import json
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.cache import out_of_space
from polymodal.data.tokenizer import cut_texts_notes, unknown_words_note, unknown_words_notes
from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError
from polymodal.index.store import IndexDamaged
from polymodal.models.beam_search import advising, last_unfinished, unfinished_notes
from polymodal.models.not_finite import NotFiniteAnswer
from polymodal.registry import answers, captions, embeds, names_an_embedder
from polymodal.serve.limits import (
    ApiError, ServeSettings, check_k, check_templates, check_texts, check_unicode_field, open_image_checked,
)
from polymodal.serve.model_warnings import with_warnings
from polymodal.serve.openapi import (
    CAPTION, CLASSIFY, EMBED, ERROR_SCHEMA, HEALTH, INDEX, INFO, JPEG, SEARCH, VQA, document_request_id, post_replies,
    replies,
)
from polymodal.serve.service import Service, open_index, vqa_fields

log = logging.getLogger(__name__)

_IMAGE_B64 = {"type": "string", "minLength": 1, "description": "base64 image bytes (a data: URL is accepted too)"}
_FILE = {"type": "string", "format": "binary", "minLength": 1}
# what the handlers refuse with a 400 that a schema can say: no file, an empty list, blank text, no item in a list
_FILES = {"type": "array", "items": _FILE, "minItems": 1}
_IMAGES_B64 = {"type": "array", "items": _IMAGE_B64, "minItems": 1}
_TEXTS = {"type": "array", "items": {"type": "string", "minLength": 1, "pattern": r"\S"}, "minItems": 1}
_TEMPLATES = {"type": "array", "items": {"type": "string", "pattern": r"\{\}", "maxLength": 500}, "minItems": 1,
              "description": 'each with {} where the label goes, e.g. "a photo of a {}."'}
_TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}  # a query or question
_LABELS = {"type": "array", "items": _TEXT, "minItems": 1}
_COMMAS = {"type": "string", "description": "comma-separated, e.g. cat,dog (or repeat the field)"}
_SOME_COMMAS = {**_COMMAS, "pattern": r"[^,\s]"}  # labels; a form's blank "choices" is no choices, JSON's a 400
# /v1/vqa's JSON choices: a number is its text (2 and 2.0: "2"), as in a QA file's "choices" and in answer()
_CHOICES = {"anyOf": [{"type": "array", "items": {"type": ["string", "number"], "pattern": r"\S"}, "minItems": 1},
                      {**_SOME_COMMAS, "description": "comma-separated, e.g. red,blue"}],
            "description": 'candidate answers, e.g. ["red", "blue"] or [1, 2] (a number is its text: 2.0 is "2")'}


_MODEL = {"type": "string", "description": "optional: the name or key of the model this server runs here (another "
                                          "is refused, so a client cannot get another model's answers unawares)"}


def _count_field(most: int, default: int | None = None) -> dict:
    """k, top_k, beam: a whole number from 1 to `most` (check_k)."""
    out = {"type": "integer", "minimum": 1, "maximum": most}
    return out if default is None else {**out, "default": default}


def _model_field(served) -> dict:
    """The `model` field of an endpoint answered by `served`: its name or key, the only values check_model_field
    takes (a plain string let a generated client send "" or another model's name, each a 400)."""
    return _MODEL if served is None else {**_MODEL, "enum": list(dict.fromkeys([served.name, served.key]))}


def _or_null(field: dict) -> dict:
    """``field`` or null, as pydantic documents an Optional field (its description and default outside)."""
    outside = {k: v for k, v in field.items() if k in ("description", "default")}
    inside = {k: v for k, v in field.items() if k not in outside}
    options = inside["anyOf"] if list(inside) == ["anyOf"] else [inside]  # choices: one anyOf, not two nested
    return {"anyOf": [*options, {"type": "null"}], **outside}


def _body(description: str, json_props: dict, form_props: dict | None, json_required: tuple = (),
          form_required: tuple = (), served=None) -> dict:
    """An endpoint's request body: JSON and (if form_props) multipart, each with the fields the server refuses a
    request without (an either/or pair, text or image, is required by neither); `served`: the model answering it.
    Other fields are refused (read_json, check_form_fields): additionalProperties false says so. A JSON field not
    required may be null, "not sent" (read_json drops it)."""
    def schema(props: dict, required: tuple) -> dict:
        out = {"type": "object", "properties": {**props, "model": _model_field(served)}, "additionalProperties": False}
        return {**out, "required": list(required)} if required else out

    content = {"application/json": {"schema": schema(json_props, json_required)}}
    props = content["application/json"]["schema"]["properties"]
    props.update((k, _or_null(v)) for k, v in list(props.items()) if k not in json_required)
    if form_props is not None:
        content["multipart/form-data"] = {"schema": schema(form_props, form_required)}
    return {"requestBody": {"required": True, "description": description, "content": content}}


DOCS_ASSETS = "/docs-assets"
# the endpoints of an index and its embedding model: absent from a server without one (serve --caption-model alone)
INDEX_PATHS = ("/v1/embed", "/v1/search", "/v1/classify", "/v1/index", "/v1/thumb/{image_id}")
MAX_BEAM = 5  # /v1/caption: wider beams cost time per request and rarely change the caption
CAPTION_CHUNK = 16  # /v1/caption photos per model job: caption()'s own batch size, so the captions are the same
# /v1/classify prompts (labels x templates) per model job: 4,000 in one job held the model thread 5.5 s on 2 cores
PROMPT_CHUNK = 256
# /v1/embed texts per model job: 256 texts of 10,000 characters (both within the limits) held the model thread ~40 s
# in one job on 2 cores, every request 503 meanwhile, ~10 s past its own 503; 32 costs nothing for short texts
TEXT_CHUNK = 32
# each with its type, not the one mimetypes guesses: on Windows it reads the registry, where .js is often text/plain,
# and under nosniff (SECURITY_HEADERS) Chromium then refused to run Swagger UI: /docs stayed blank
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}


def swagger_assets() -> Path | None:
    """Swagger UI 5's files from the swagger-ui-bundle-v2 package (the serve extra), or None: /docs then falls back
    to FastAPI's CDN links, which need internet. Swagger UI 4 (swagger-ui-bundle 1.x, the same module) cannot read
    the OpenAPI 3.1 schema FastAPI writes: its /docs showed only "Unable to render this definition"."""
    try:
        import swagger_ui_bundle
    except ImportError:
        log.warning("swagger-ui-bundle-v2 is not installed: /docs loads Swagger UI from a CDN (needs internet)")
        return None
    # both packages unpack into swagger_ui_bundle/vendor/swagger-ui-X.Y.Z; either one's __init__ may be the one left
    folders = Path(swagger_ui_bundle.swagger_ui_path).parent.glob("swagger-ui-*")
    usable = [(_swagger_version(f.name), f) for f in folders if all((f / n).is_file() for n in DOCS_FILES)]
    usable = [(version, f) for version, f in usable if version >= (5,)]
    if not usable:
        log.warning("swagger-ui-bundle holds no Swagger UI 5 (Swagger UI 4 cannot show an OpenAPI 3.1 schema): /docs "
                    "loads Swagger UI from a CDN (needs internet); pip install swagger-ui-bundle-v2 serves it offline")
        return None
    return max(usable)[1]


def _swagger_version(folder_name: str) -> tuple[int, ...]:
    """'swagger-ui-5.31.0' -> (5, 31, 0); () for a name without one."""
    found = re.fullmatch(r"swagger-ui-(\d+(?:\.\d+)*)", folder_name)
    return tuple(int(x) for x in found.group(1).split(".")) if found else ()


def _needs_index(name) -> PolymodalError:
    return PolymodalError(f"{name} embeds images for an index: pass --db DB (or --qdrant URL) to serve it; without "
                          "an index a server answers /v1/vqa (--vqa-model) and /v1/caption (--caption-model) only")


def create_app(
    model: Any, db_path: str | Path | None, api_key: str | None = None, settings: ServeSettings | None = None,
    runtime: str = "auto", vqa_model: Any = None, caption_model: Any = None, **load_options,
):
    """A FastAPI app serving `model` (a registered name, a checkpoint path, or a loaded model) over the index at
    `db_path` (or a QdrantCollection: searched, not written). A missing index, an unknown model or a model that doesn't match the index raises PolymodalError.
    `db_path` None: no index and no embedding model; the app answers /v1/vqa and /v1/caption only (a VQA model or
    captioner passed as `model` serves them), and the index's endpoints are left out of the API (a 404 saying why).

    /v1/vqa answers with `vqa_model`, or with `model` itself when it answers questions. A VQA model that cannot embed
    (easy-vqa, coco-yesno) passed as `model` becomes the VQA model, and the index's own model embeds and searches.
    /v1/caption writes captions with `caption_model` (a captioner passed as `model` serves it the same way).
    Names are loaded with polymodal.load(name, runtime=runtime, **load_options)."""
    if api_key is not None and not api_key.strip():  # None is "no key"; a blank one is a mistake, not the same
        raise PolymodalError("the API key (--api-key or $POLYMODAL_API_KEY) is blank, which would turn "
                             "authentication off; give a non-empty key, or none at all to serve without one")
    if api_key is not None and api_key != api_key.strip():  # "KEY\n" from a secret file: clients can't send it
        log.warning("the API key has whitespace around it (a newline from the file it was read from?), which no "
                    "HTTP client can send in a header: it is used without it")
        api_key = api_key.strip()
    try:
        from fastapi import FastAPI, Request
        from fastapi import Path as UrlPath
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException as StarletteHTTPException
        from starlette.formparsers import MultiPartException, MultiPartParser
    except ImportError as exc:
        raise PolymodalError(
            f"serving needs the serve extra ({exc.name} is missing); pip install 'polymodal[serve]'"
        ) from exc

    from polymodal.apps.zeroshot import alike_labels_note, first_spellings, merged_labels_note, rank_labels, same_label
    from polymodal.apps.zeroshot import ZeroShotMixin
    from polymodal.serve.logs import RequestIdMiddleware, request_id, request_path
    from polymodal.serve.middleware import (PROBES, ApiKeyMiddleware, LimitsMiddleware, MetricsMiddleware,
                                           SecurityHeadersMiddleware)
    from polymodal.serve.page import render_page

    class _StrictTextMultiPartParser(MultiPartParser):
        def on_part_end(self) -> None:
            # Starlette's private state: a version without it parses as before (text read as Latin-1 if need be)
            part, charset = getattr(self, "_current_part", None), getattr(self, "_charset", None)
            if part is not None and getattr(part, "file", True) is None:
                try:
                    bytes(getattr(part, "data", b"")).decode(charset or "utf-8")
                except (UnicodeDecodeError, LookupError):
                    raise MultiPartException(
                        f"form field {part.field_name[:40]!r} is not UTF-8 text; send form text as UTF-8") from None
            super().on_part_end()

    settings = settings or ServeSettings()
    # a missing index fails before the (slow) model load
    index_info = open_index(db_path).info() if db_path is not None else {}
    index_model = index_info.get("model_name")  # None without an index: load(None) is None

    def load(m):
        import polymodal
        from polymodal.registry import recorded_options_for, set_image_precision, settled_runtime

        if not isinstance(m, (str, Path)):
            return m
        rt = settled_runtime(runtime, m)  # auto: each model by its own kind (an export beside a built-in name)
        options = {k: v for k, v in load_options.items() if k != "threads" or rt == "onnx"}  # onnxruntime's option
        options = {**recorded_options_for(index_info, m, rt), **options}  # the index's model as loaded (tokenizer=)
        precision = options.get("precision", "fp32")
        if precision == "fp32" or rt != "torch":  # (onnx + bf16: polymodal.load's own error)
            return polymodal.load(m, runtime=rt, **options)
        loaded = polymodal.load(m, runtime=rt, **{k: v for k, v in options.items() if k != "precision"})
        if embeds(loaded) or getattr(loaded, "image_tower", None) is not None:  # what --precision is for: refused
            set_image_precision(loaded, str(m), precision)                    # there if it cannot apply
        else:  # a VQA model without that tower (coco-yesno) beside a bf16 embedding model
            log.info("%s runs in fp32: --precision %s applies to EfficientNet-Lite0 image towers", m, precision)
        return loaded

    if db_path is None and names_an_embedder(model):  # refused as below, but before its slow load
        raise _needs_index(model)
    model, vqa_model = load(model), load(vqa_model)
    if isinstance(caption_model, (str, Path)):
        import polymodal

        from polymodal.registry import settled_runtime

        rt = settled_runtime(runtime, caption_model)  # --threads too (onnxruntime's option); not --precision
        threads = {"threads": load_options["threads"]} if rt == "onnx" and "threads" in load_options else {}
        caption_model = polymodal.load(caption_model, runtime=rt, **threads)
    if vqa_model is not None and answers(model) and not embeds(model):  # else "cannot embed images", about --model
        raise PolymodalError(f"two VQA models: --model {getattr(model, 'name', model)} answers questions (the "
                             f"index's own model then embeds), and so would --vqa-model "
                             f"{getattr(vqa_model, 'name', vqa_model)}; pass one of them")
    if vqa_model is None and answers(model) and not embeds(model):
        # an index holds embeddings, which a VQA model cannot make: the index's own model serves it
        model, vqa_model = load(index_model), model
    elif caption_model is None and captions(model) and not embeds(model):  # the same for a captioner
        model, caption_model = load(index_model), model
    if db_path is None and model is not None:  # an embedding model serves an index (what would it search?)
        raise _needs_index(getattr(model, "name", model))
    if db_path is None and vqa_model is None and caption_model is None:
        raise PolymodalError("nothing to serve: pass --db DB (an index built by polymodal index) or --qdrant URL, or "
                             "--vqa-model / --caption-model to serve only answers or captions")
    svc = Service(model, db_path, settings, vqa_model=vqa_model, caption_model=caption_model)
    vqa_model = svc.vqa_model  # (not `vqa`: that name is the endpoint below)
    s = settings
    # an image id as Service.parse_id reads it: an index's row id (any other text is a 422), a collection's UUID
    id_text = {"type": "string", "pattern": "^[0-9]{1,19}$"} if svc.local else {"type": "string", "format": "uuid"}
    like_id = {"anyOf": [{"type": "integer", "minimum": 0}, id_text]} if svc.local else id_text

    @asynccontextmanager
    async def lifespan(app):
        svc.start()
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(
        title="polymodal",
        version=_version(),
        description="; ".join(
            ([f"Embed, search, classify with model `{model.key}` over an image index"] if model is not None else
             ["No index (served without --db): no embedding, search or classification"])
            + ([f"answer questions with `{vqa_model.key}`"] if vqa_model is not None else [])
            + ([f"write captions with `{caption_model.key}`"] if caption_model is not None else [])) + ". "
        + "Errors are JSON `{\"error\": \"...\"}`." + (" Send the API key in the `X-API-Key` header." if api_key else ""),
        lifespan=lifespan,
        redoc_url=None,
        docs_url=None,  # served below from local files: no CDN, so /docs works offline
    )
    app.state.service = svc
    damage_logged: set[str] = set()  # messages of a damaged index already logged

    # -- request parsing ------------------------------------------------------------------------------------------
    async def read_json(request: Request, allowed: set[str], example: str, kind: str = "embed") -> dict:
        raw = await request.body()
        try:
            data = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise ApiError(400, f"malformed JSON ({str(exc)[:200]}); send an object like {example}") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the JSON body must be an object like {example}, not {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; this endpoint takes {', '.join(sorted(allowed))}")
        check_model_field(data.get("model"), kind)
        # null is "not sent", in every field (a generated client sends its unset fields so): "k": null was a 400
        # where "top_k": null took the default, and "image": null beside "images" a 400
        return {key: value for key, value in data.items() if value is not None}

    def content_type(request: Request, multipart: bool = True) -> str:
        # a compressed body (a client's gzip option) was read as it came: "malformed JSON ('utf-8' codec can't
        # decode byte 0x8b...)", or "multipart body rejected" for a form, never naming the compression
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ApiError(415, f"Content-Encoding {encoding[:40]!r} is not supported; send the body uncompressed")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json" or (multipart and ctype == "multipart/form-data"):
            return ctype
        wanted = "application/json or multipart/form-data" if multipart else "application/json"
        raise ApiError(415, f"unsupported Content-Type {ctype or '(none)'!r}; send {wanted}")

    @asynccontextmanager
    async def parse_form(request: Request):
        """The multipart form, its text fields read as UTF-8 (or the charset the request declares) and refused
        otherwise: Starlette falls back to Latin-1, which turned Windows-1251 or Shift-JIS text into mojibake."""
        try:
            parser = _StrictTextMultiPartParser(request.headers, request.stream(), max_files=s.max_images_per_request,
                                                max_fields=s.max_labels + 16)
            form = await parser.parse()
        except MultiPartException as exc:
            raise StarletteHTTPException(400, exc.message) from None
        try:
            yield form
        finally:
            await form.close()

    def check_form_fields(form, allowed: set[str], kind: str = "embed") -> None:
        unknown = sorted(set(form.keys()) - allowed)
        if unknown:
            raise ApiError(400, f"unknown form field(s) {', '.join(map(repr, unknown))}; this endpoint takes {', '.join(sorted(allowed))}")
        check_model_field(form_text(form, "model"), kind)

    def check_model_field(name, kind: str = "embed") -> None:
        """`model` names the model that answers this endpoint: the VQA model on /v1/vqa, the captioner on
        /v1/caption, the embedding model elsewhere."""
        served = {"embed": model, "vqa": vqa_model if vqa_model is not None else model, "caption": caption_model}
        m = served[kind]
        if name is None or name in (m.name, m.key):
            return
        where = {"embed": "this endpoint", "vqa": "/v1/vqa", "caption": "/v1/caption"}[kind]
        other = next((k for k, o in served.items() if o is not None and o is not m and name in (o.name, o.key)), None)
        if other is not None:  # served here, on another kind of endpoint
            answers = {"embed": "the embedding endpoints", "vqa": "/v1/vqa", "caption": "/v1/caption"}[other]
            raise ApiError(400, f"model {str(name)!r} answers {answers} on this server; {where} uses {m.name!r}: drop "
                                f"the model field or send {m.name!r}")
        flag = "--caption-model" if kind == "caption" else "--model"
        raise ApiError(400, f"this server serves model {m.name!r} ({m.key}) on {where}, not {str(name)[:100]!r}; "
                            f"drop the model field or start a server with {flag} {str(name)[:100]}")

    def form_text(form, key: str) -> str | None:
        """A single-valued text field. Sent twice, it is refused: Starlette keeps the last value without a word."""
        values = form_texts(form, key)
        if len(values) > 1:
            raise ApiError(400, f"form field {key!r} was sent {len(values)} times; send it once")
        return values[0] if values else None

    def form_texts(form, key: str) -> list[str]:
        values = form.getlist(key)
        if not all(isinstance(v, str) for v in values):
            raise ApiError(400, f"form field {key!r} must be text, not a file")
        return values

    def form_list(form, key: str) -> list[str] | None:
        """A multipart list field (labels, choices): each value comma-separated, and it may be repeated."""
        return [part.strip() for v in form_texts(form, key) for part in v.split(",") if part.strip()] or None

    async def form_images(form, required: bool = True) -> list[tuple[str, bytes]]:
        out = []
        for i, item in enumerate(form.getlist("image")):
            if not isinstance(item, UploadFile):
                raise ApiError(400, "form field 'image' must be a file upload (multipart file part), not text")
            out.append((_client_name(item.filename, i), await item.read()))
        if required and not out:
            raise ApiError(400, "no image: send the image file in the multipart field 'image'")
        return out

    def json_images(data: dict, required: bool = True) -> list[tuple[str, bytes]]:
        fields = []  # (field name for messages, value)
        if "image" in data:
            if not isinstance(data["image"], str):
                raise ApiError(400, f'"image" must be a base64 string (one image), got {_json_kind(data["image"])}')
            fields.append(('"image"', data["image"]))
        if "images" in data:
            if not isinstance(data["images"], list):
                raise ApiError(400, f'"images" must be a list of base64 strings, got {_json_kind(data["images"])}')
            fields += [(f'"images"[{i}]', x) for i, x in enumerate(data["images"])]
        if required and not fields:  # an empty "images" list is named as what was sent
            sent = '"images" is empty' if "images" in data else "no image"
            raise ApiError(400, f'{sent}: send {{"image": "<base64 bytes>"}} or {{"images": [...]}}, or a multipart '
                                "file field 'image'")
        if len(fields) > s.max_images_per_request:
            raise ApiError(413, f"{len(fields)} images in one request; the limit is {s.max_images_per_request}")
        return [(f"image {i}", _b64(x, where)) for i, (where, x) in enumerate(fields)]

    async def prepare(items: list[tuple[str, bytes]]) -> list:
        """Decoded and preprocessed in a worker thread, one image per thread job: ready for svc.batcher.images.
        A request cancelled (past --timeout, or its client gone) stops after its current image: in one job, 64
        at-limit PNGs kept a thread decoding for ~90 s after the request's 503."""
        with svc.batcher.incoming("image"):  # an image batch being filled waits for this request
            out = []
            for item in items:
                out += await run_in_threadpool(svc.prepare, [item])
            return out

    async def decode(items: list[tuple[str, bytes]], model) -> list:
        """Decoded to PIL images in a worker thread, one image per thread job (as prepare): for model methods that
        take images (answer, classify, caption)."""
        images, pixels = [], 0
        for item in items:
            images += await run_in_threadpool(svc.decode, [item], model, (len(images), pixels))
            pixels += images[-1].width * images[-1].height
        return images

    def thumb_url(request: Request, ref: str) -> str:
        return request.scope.get("root_path", "") + ref

    # -- endpoints ------------------------------------------------------------------------------------------------
    # HEAD too on the page and /healthz: load balancers and uptime checks send it (Starlette drops HEAD's body)
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        serves = list(svc.endpoints().values()) if svc.index is None else None
        panels = {"search": svc.index is not None, "add": svc.writable, "vqa": svc.vqa,
                  "caption": svc.caption_model is not None}
        return HTMLResponse(render_page(request.scope.get("root_path", ""), serves,
                                        tuple(panel for panel, served in panels.items() if served)))

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse

    assets = swagger_assets()

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a reverse proxy at a sub-path (serve --root-path)
        local = {"swagger_js_url": f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                 "swagger_css_url": f"{root}{DOCS_ASSETS}/swagger-ui.css",
                 "swagger_favicon_url": f"{root}{DOCS_ASSETS}/favicon-32x32.png"} if assets else {}
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="polymodal API", **local)

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        if assets is None or name not in DOCS_FILES:
            raise ApiError(404, f"no docs asset {name[:60]!r}")
        return FileResponse(assets / name, media_type=DOCS_FILES[name], headers={"Cache-Control": "max-age=86400"})

    @app.head("/healthz", include_in_schema=False)  # a second route: one with both methods repeats its operation id
    @app.get("/healthz", summary="Liveness: 200 while the service runs (never needs the API key)",
             responses=replies(HEALTH, common=()))
    async def healthz():
        return {"status": "ok"}

    @app.head("/readyz", include_in_schema=False)
    @app.get("/readyz", summary="Readiness: 200 while searches can be answered, else 503 saying why (never needs the "
             "API key)", responses=replies(HEALTH, 503, common=()))
    async def readyz():
        # /healthz stays 200 while the index is moved away or rebuilt with another model: a load balancer keeps
        # sending searches that all get 503
        why = await run_in_threadpool(svc.not_ready)
        if why:
            raise ApiError(503, why, {"Retry-After": "30"})
        return {"status": "ok"}

    @app.get("/v1/info", summary="The model, the index size, batching and limits", responses=replies(INFO, 503))
    async def info():
        return JSONResponse(await run_in_threadpool(svc.info))

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=PlainTextResponse,
             responses=replies(None))
    async def metrics():
        text = await run_in_threadpool(svc.metrics.render)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(
        "/v1/embed",
        summary="Embed texts or images into the model's space (L2-normalised float32)",
        openapi_extra=_body(
            "JSON texts or base64 images, or multipart image files",
            {"texts": _TEXTS, "images": _IMAGES_B64, "image": _IMAGE_B64},
            {"image": _FILES}, form_required=("image",), served=model,
        ),
        responses=post_replies(EMBED),
    )
    async def embed(request: Request):
        warnings = []
        if content_type(request) == "application/json":
            data = await read_json(request, {"texts", "image", "images", "model"}, '{"texts": ["a dog"]}')
            if "texts" in data:
                if "image" in data or "images" in data:
                    raise ApiError(400, "send either texts or images in one request, not both")
                texts = check_texts(data["texts"], s.max_texts_per_request, s.max_text_chars)
                # one model job per chunk: other requests run between them, and a request past --timeout stops
                # after its current chunk instead of holding the model thread to the end
                parts = [await svc.batcher.texts(texts[start : start + TEXT_CHUNK])
                         for start in range(0, len(texts), TEXT_CHUNK)]
                vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
                warnings = (await run_in_threadpool(cut_texts_notes, model, texts)
                            + await run_in_threadpool(unknown_words_notes, model, texts))
            else:
                if not ("image" in data or "images" in data):
                    raise ApiError(400, 'nothing to embed: send {"texts": [...]} or {"images": [base64, ...]}')
                vectors = await svc.batcher.images(await prepare(json_images(data)))
        else:
            async with parse_form(request) as form:
                check_form_fields(form, {"image", "model"})
                items = await form_images(form)
            vectors = await svc.batcher.images(await prepare(items))
        return JSONResponse({"model": model.key, "dim": int(vectors.shape[1]), "vectors": vectors.tolist(),
                             "warnings": warnings})

    @app.post(
        "/v1/search",
        summary="Search the index by text or by image",
        openapi_extra=_body(
            "JSON text (or base64 image, or \"like\": an indexed image's id) and k, or a multipart image file (or "
            "text field) and k",
            {"text": _TEXT, "image": _IMAGE_B64, "like": like_id, "k": _count_field(s.max_k, 10)},
            {"image": _FILE, "text": _TEXT, "k": _count_field(s.max_k, 10)}, served=model,
        ),
        responses=post_replies(SEARCH, 404, 422),  # "like": an id not in the index, or not an id
    )
    async def search(request: Request):
        if content_type(request) == "application/json":
            data = await read_json(request, {"text", "image", "like", "k", "model"}, '{"text": "a dog", "k": 10}')
            k = check_k(data.get("k", 10), s.max_k)
            text = data.get("text")
            if text is not None and not isinstance(text, str):
                raise ApiError(400, f'"text" must be a string (one query), got {_json_kind(text)}; '
                               "to embed several texts use /v1/embed")
            items = json_images(data, required=False)
            if data.get("like") is not None:  # more like an indexed image: its stored vector, nothing embedded
                if text is not None or items:
                    raise ApiError(400, 'send one of "text", "image" or "like" (an indexed image\'s id), not several')
                like = data["like"]
                if isinstance(like, bool) or not isinstance(like, (int, str)):
                    raise ApiError(400, f'"like" must be an image id from /v1/search, got {_json_kind(like)}')
                vectors = await run_in_threadpool(svc.vector_of, svc.parse_id(str(like)))
                return await _hits(request, vectors, k, [])
        else:
            async with parse_form(request) as form:
                check_form_fields(form, {"image", "text", "k", "model"})
                k = check_k(form_text(form, "k") or 10, s.max_k)
                text = form_text(form, "text")
                items = await form_images(form, required=False)
        if (text is None) == (not items):
            raise ApiError(400, 'send either a text query or one image, e.g. {"text": "a dog on a beach", "k": 10}')
        if len(items) > 1:
            raise ApiError(400, "search takes one image per request")
        if text is not None and is_blank(text):
            raise ApiError(400, '"text" is blank; send what to look for, e.g. "a dog on a beach"')
        warnings = []
        if text is not None:
            vectors = await svc.batcher.texts(check_texts([text], 1, s.max_text_chars, "text"))
            # the text tower says it once in the server log, which a client never sees: each reply says it
            warnings = cut_texts_notes(model, [text], "the query")
            warnings += [note] if (note := unknown_words_note(model, text)) else []
        else:
            vectors = await svc.batcher.images(await prepare(items))
        return await _hits(request, vectors, k, warnings)

    async def _hits(request: Request, vectors, k: int, warnings: list[str]) -> JSONResponse:
        hits = (await run_in_threadpool(svc.search, vectors, k))[0]
        for rank, hit in enumerate(hits, 1):
            hit.update(rank=rank, name=Path(hit["path"]).name, thumb=thumb_url(request, hit["thumb"]))
        return JSONResponse({"model": model.key, "k": k, "hits": hits, "warnings": warnings})

    async def label_embeddings(labels: list[str], templates, per_label: int):
        # labels in chunks, one model job each: other requests run between them, and a request past --timeout stops
        # after its current chunk. A label's vector is its own templates' mean, so chunks give the same vectors
        step = max(1, PROMPT_CHUNK // per_label)
        parts = [await svc.batcher.call(model.label_embeddings, labels[start : start + step], templates)
                 for start in range(0, len(labels), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @app.post(
        "/v1/classify",
        summary="Zero-shot classification of images against labels",
        openapi_extra=_body(
            "multipart image file(s) + labels (comma-separated or repeated), or JSON with base64 image(s)",
            {"image": _IMAGE_B64, "images": _IMAGES_B64, "labels": _LABELS,
             "top_k": _count_field(s.max_labels), "templates": _TEMPLATES},
            {"image": _FILES, "labels": _SOME_COMMAS, "top_k": _count_field(s.max_labels), "templates": _TEMPLATES},
            json_required=("labels",), form_required=("image", "labels"), served=model,
        ),
        responses=post_replies(CLASSIFY),
    )
    async def classify(request: Request):
        if content_type(request) == "application/json":
            data = await read_json(
                request, {"image", "images", "labels", "top_k", "templates", "model"},
                '{"image": "<base64>", "labels": ["cat", "dog"]}',
            )
            labels, top_k, templates = data.get("labels"), data.get("top_k"), data.get("templates")
            items = json_images(data)
        else:
            async with parse_form(request) as form:
                check_form_fields(form, {"image", "labels", "top_k", "templates", "model"})
                labels = form_list(form, "labels")
                top_k, templates = form_text(form, "top_k"), form_texts(form, "templates") or None
                items = await form_images(form)
        labels = _text_list(labels, "labels", s.max_labels)
        templates = check_templates(templates, s.max_templates)
        per_label = len(templates or getattr(model, "DEFAULT_TEMPLATES", ("{}",)))
        if len(labels) * per_label > s.max_prompts:
            raise ApiError(413, f"{len(labels)} labels x {per_label} templates = {len(labels) * per_label:,} prompts; "
                                f"the limit is {s.max_prompts:,} per request: send fewer labels or templates")
        if top_k is not None:
            top_k = check_k(top_k, s.max_labels, "top_k")
        if getattr(type(model), "classify", None) in (None, ZeroShotMixin.classify):  # the usual path: images batched with other requests
            image_emb = await svc.batcher.images(await prepare(items))
            label_emb = await label_embeddings(labels, templates, per_label)
            ranked = rank_labels(image_emb, label_emb, labels, model.logit_scale, top_k)
            keep = first_spellings(labels)
            alike = alike_labels_note([labels[i] for i in keep], label_emb[keep])
        else:
            alike = ""
            ranked = await svc.batcher.call(model.classify, await decode(items, model), labels, templates, top_k)
        results = [
            {"image": name, "labels": [{"label": l, "score": float(p)} for l, p in r]}
            for (name, _), r in zip(items, ranked)
        ]
        # as `polymodal classify` notes it: a softmax over one label is 1.0 whatever the image
        warnings = ["with one label every image scores 1.0 (scores are shared out among the labels); send two or "
                    "more labels"] if len({same_label(x) for x in labels}) == 1 else []
        warnings += [note for note in (merged_labels_note(labels), alike) if note]
        return JSONResponse({"model": model.key, "results": results, "warnings": warnings})

    @app.post(
        "/v1/vqa",
        summary="Answer a question about an image (only for models with a VQA head; 404 otherwise)",
        openapi_extra=_body(
            "multipart image + question (+ choices), or JSON with a base64 image",
            {"image": _IMAGE_B64, "question": _TEXT, "choices": _CHOICES},
            {"image": _FILE, "question": _TEXT, "choices": _COMMAS},
            json_required=("image", "question"), form_required=("image", "question"), served=vqa_model,
        ),
        responses=post_replies(VQA, 404),
    )
    async def vqa(request: Request):
        if vqa_model is None and model is None:  # a captioning server, no index
            raise ApiError(404, "this server has no VQA model; start it with --vqa-model easy-vqa (or another VQA "
                                "model)")
        if vqa_model is None:
            raise ApiError(
                404, f"model {model.name!r} cannot answer questions and this server has no VQA model; start it with "
                "--model easy-vqa (or another VQA model: the index's own model still embeds and searches)",
            )
        if content_type(request) == "application/json":
            data = await read_json(
                request, {"image", "question", "choices", "model"}, '{"image": "<base64>", "question": "what is this?"}', kind="vqa",
            )
            question, choices = data.get("question"), data.get("choices")
            items = json_images(data)
        else:
            async with parse_form(request) as form:
                check_form_fields(form, {"image", "question", "choices", "model"}, kind="vqa")
                question, choices = form_text(form, "question"), form_list(form, "choices")
                items = await form_images(form)
        if len(items) != 1:
            raise ApiError(400, "vqa takes exactly one image")
        if question is not None and not isinstance(question, str):
            raise ApiError(400, f'"question" must be a string, got {_json_kind(question)}')
        if question is None or is_blank(question):
            raise ApiError(400, 'no question: send "question", e.g. "what colour is the car?"')
        question = check_texts([question], 1, 2000, "question")[0]
        if choices is not None:
            choices = _text_list(choices, "choices", s.max_labels, max_chars=500, numbers=True)
        image = (await decode(items, vqa_model))[0]
        answer, warnings = await svc.batcher.call(with_warnings, vqa_model.answer, image, question, choices)
        # the reply's own fields last: an answer dict holding "model" or "question" keys cannot replace them
        return JSONResponse({**vqa_fields(answer), "model": vqa_model.key, "question": question, "warnings": warnings})

    @app.post(
        "/v1/caption",
        summary="Write a caption for each image (only with a captioner: serve --caption-model captioner; 404 otherwise)",
        openapi_extra=_body(
            "multipart image file(s) (+ beam), or JSON with base64 image(s)",
            {"image": _IMAGE_B64, "images": _IMAGES_B64, "beam": _count_field(MAX_BEAM, 3)},
            {"image": _FILES, "beam": _count_field(MAX_BEAM, 3)}, form_required=("image",), served=caption_model,
        ),
        responses=post_replies(CAPTION, 404),
    )
    async def caption(request: Request):
        if caption_model is None:
            raise ApiError(404, "this server has no captioner; start it with --caption-model captioner (or a folder "
                                "written by polymodal train captioner)")
        if content_type(request) == "application/json":
            data = await read_json(request, {"image", "images", "beam", "model"}, '{"image": "<base64>"}', kind="caption")
            beam, items = data.get("beam"), json_images(data)
        else:
            async with parse_form(request) as form:
                check_form_fields(form, {"image", "beam", "model"}, kind="caption")
                beam, items = form_text(form, "beam"), await form_images(form)
        beam = 3 if beam is None else check_k(beam, MAX_BEAM, "beam")
        images, written, kinds, max_tokens = await decode(items, caption_model), [], [], 0
        for start in range(0, len(images), CAPTION_CHUNK):  # one model job per chunk: other requests run between
            # them, and a request past --timeout stops after its current chunk instead of holding the model thread
            chunk, chunk_kinds, max_tokens = await svc.batcher.call(
                _captions, caption_model, images[start : start + CAPTION_CHUNK], beam)
            written, kinds = written + chunk, kinds + chunk_kinds
        # the server log says it once per model, which a client never sees: each reply says it
        return JSONResponse({"model": caption_model.key,
                             "results": [{"image": name, "caption": c, "cut": kind == "cut"}
                                         for (name, _), c, kind in zip(items, written, kinds)],
                             "warnings": unfinished_notes(kinds, max_tokens, fix="")})

    @app.post(
        "/v1/index",
        summary="Add uploaded images to the index, or remove images by id",
        openapi_extra=_body(
            "multipart image file(s) to add, or JSON {\"remove\": [ids]}",
            {"remove": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": s.max_remove_ids}},
            {"image": _FILES}, json_required=("remove",), form_required=("image",), served=model,
        ),
        responses=post_replies(INDEX, 405, 409, 507),
    )
    async def index_write(request: Request):
        if not svc.writable:  # before reading the body: nothing it holds could be done
            raise svc._read_only()
        if content_type(request) == "application/json":
            data = await read_json(request, {"remove", "model"}, '{"remove": [12, 13]}')
            ids = data.get("remove")
            if not isinstance(ids, list) or not ids:
                raise ApiError(400, 'send {"remove": [ids]} with at least one image id (ids come from /v1/search)')
            if len(ids) > s.max_remove_ids:
                raise ApiError(413, f"{len(ids)} ids in one request; the limit is {s.max_remove_ids}")
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ApiError(400, '"remove" must be a list of integer image ids')
            valid = [i for i in ids if 0 <= i < 2**63]  # larger ones can't be SQLite ids
            result = await run_in_threadpool(svc.remove_ids, valid)
            result["not_found"] += [i for i in ids if not 0 <= i < 2**63]
            return JSONResponse(result)
        async with parse_form(request) as form:
            check_form_fields(form, {"image", "model"})
            items = await form_images(form)

        def validate_and_add():
            # decode each (at the size the model reads: a damaged JPEG fails as it would at full size) so a bad file
            # fails the request before anything is written
            size = svc.draft_sizes[id(svc.model)]
            for name, data in items:
                open_image_checked(data, s.max_image_pixels, name, size)
            return svc.add_images(items)

        result = await run_in_threadpool(validate_and_add)
        for entry in result["added"]:
            entry["thumb"] = thumb_url(request, entry["thumb"])
        return JSONResponse(result)

    @app.get("/v1/thumb/{image_id}", summary="A JPEG thumbnail of an indexed image, by id", response_class=Response,
             responses=replies(JPEG, 404, 422, 503, media_type="image/jpeg"))
    async def thumb(image_id: str = UrlPath(json_schema_extra=id_text)):  # documented only: parse_id's own 422
        data = await run_in_threadpool(svc.thumbnail, svc.parse_id(image_id))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    if svc.index is None:  # no index, no embedding model: these are left out of the API and /docs (a 404 says why)
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in INDEX_PATHS]
    served = [p for p, m in (("/v1/vqa", vqa_model), ("/v1/caption", caption_model)) if m is not None]

    # -- errors: always {"error": "..."}; under --hide-paths without the index's place (svc.hide) ---------------------
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse({"error": svc.hide(exc.message)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(IndexDamaged)  # the server's problem, not the client's (PolymodalError's 400)
    async def index_damaged(request, exc: IndexDamaged):
        if str(exc) not in damage_logged:  # once, not a line (it was a traceback) per request
            damage_logged.add(str(exc))
            log.error("%s; requests that read the index answer 503 until it is restored", exc)
        return JSONResponse({"error": svc.hide(str(exc))}, status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(NotFiniteAnswer)  # the served model's fault, not the request's (PolymodalError's 400)
    async def not_finite_answer(request, exc: NotFiniteAnswer):
        if str(exc) not in damage_logged:  # once, as a damaged index is
            damage_logged.add(str(exc))
            log.error("/v1/vqa: %s", exc)
        return JSONResponse({"error": svc.hide(str(exc))}, status_code=500)

    @app.exception_handler(PolymodalError)
    async def polymodal_error(request, exc: PolymodalError):
        return JSONResponse({"error": svc.hide(str(exc))}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found" and svc.index is None and _index_path(request.scope):
            message = (f"this server has no index (it was started without --db), so no {request.url.path}: it "
                       f"answers {' and '.join(served)}; search, embed and classify need a server with --db DB")
        elif exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 400 and message.startswith("Too many files"):  # Starlette's max_files, as JSON's
            return JSONResponse({"error": f"more than {s.max_images_per_request} images in one request; the limit is "
                                          f"{s.max_images_per_request}: send them in several requests"}, status_code=413)
        elif exc.status_code == 400 and message.startswith("Too many fields"):  # labels sent as fields, one each
            return JSONResponse({"error": f"more than {s.max_labels + 16:,} form fields in one request; send labels "
                                          f"comma-separated in one field, at most {s.max_labels:,} per request"},
                                status_code=413)
        elif exc.status_code == 400 and message.startswith("form field"):  # a text field that is not UTF-8
            pass
        elif exc.status_code == 400 and "multipart" in request.headers.get("content-type", ""):
            message = f"multipart body rejected ({message}); send multipart/form-data with the image in a file field named 'image'"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs for the right method"
        return JSONResponse({"error": svc.hide(message)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "path", "query"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"error": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(OSError)  # its own handler: Exception's is re-raised into the ASGI server's traceback log
    async def disk_error(request, exc: OSError):
        if not out_of_space(exc):
            return await internal_error(request, exc)
        # an upload on a full disk: the add's transaction rolled back and its staged files were removed
        log.error("%s %s: %s: %s", request.method, request_path(request.scope), exc.strerror,
                  exc.filename or "(no file name)")
        return JSONResponse({"error": "the server's disk is full: nothing was changed (the index is as it was); "
                                      "retry once space is freed there"}, status_code=507)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request_path(request.scope))
        exc.polymodal_logged = True  # Starlette re-raises it to the server: _LoggedOnce drops uvicorn's 2nd traceback
        # the id finds the traceback in the log: a user who reports the message (the page shows it) gives it too
        rid = f" (request id {request_id()})" if request_id() else ""
        return JSONResponse({"error": f"internal server error; see the server log{rid}"}, status_code=500)

    # -- middleware: added innermost first ------------------------------------------------------------------------
    app.add_middleware(LimitsMiddleware, max_body_bytes=s.max_body_bytes, timeout_s=s.request_timeout_s,
                       no_deadline=("/v1/index",))
    # the page shell and the API docs hold no data: they load without the key (every call they make needs it)
    docs_paths = ("/docs", "/openapi.json", *(f"{DOCS_ASSETS}/{n}" for n in DOCS_FILES))
    app.add_middleware(ApiKeyMiddleware, api_key=api_key, open_paths=(*PROBES, "/", *docs_paths),
                       allowed_hosts=s.allowed_hosts)
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics, routes_of=app)
    # the request id outside them all, Starlette's error middleware too (it answers a 500 past every add_middleware
    # layer): every answer has its X-Request-ID (and the security headers), and internal_error's log line the id
    stack_of = app.build_middleware_stack
    app.build_middleware_stack = lambda: RequestIdMiddleware(SecurityHeadersMiddleware(stack_of()))
    schema_of = app.openapi

    def openapi_complete() -> dict:
        schema = schema_of()  # built once and cached by FastAPI; setting these twice changes nothing
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA  # every error's body (polymodal.serve.openapi)
        document_request_id(schema)
        if api_key:  # /docs then shows "Authorize" and sends X-API-Key with "Try it out" (else every try is a 401)
            components["securitySchemes"] = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                                              "Bearer": {"type": "http", "scheme": "bearer"}}  # what Prometheus sends
            schema["security"] = [{"ApiKey": []}, {"Bearer": []}]  # either
            for probe in PROBES:  # open (ApiKeyMiddleware): probes send no key
                schema["paths"][probe]["get"]["security"] = []
        return schema

    app.openapi = openapi_complete
    logging.getLogger("uvicorn.error").addFilter(LOGGED_ONCE)  # added once however many apps (the same filter)
    return app


class _LoggedOnce(logging.Filter):
    """Leaves out uvicorn's "Exception in ASGI application" for an error that internal_error logged already, with
    the request's method and path: Starlette re-raises each error it answered with a 500 for the server to log, so
    every 500's traceback was logged twice, the second time without saying which request it was."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record.exc_info[1] if record.exc_info else None, "polymodal_logged", False)


LOGGED_ONCE = _LoggedOnce()


def _version() -> str:
    from polymodal import __version__

    return __version__


def _index_path(scope) -> bool:
    """The request is for an endpoint of INDEX_PATHS (a thumbnail's by its prefix), wherever a proxy mounts the app."""
    path, root = scope["path"], scope.get("root_path", "")
    path = path[len(root):] if root and path.startswith(root + "/") else path
    return path in INDEX_PATHS or path.startswith("/v1/thumb/")


# a served caption is written to the captioner's default max_tokens (20), which no flag or request changes
SERVED_CAPTION_FIX = "`polymodal caption --max-tokens N` writes longer ones (a server cannot); "


def _captions(model, images: list, beam: int) -> tuple[list[str], list, int]:
    """model.caption(images, beam), each caption's `unfinished` kind ("cut", "empty" or None) and the max_tokens it
    was written to (none for a captioner that does not say)."""
    with advising(SERVED_CAPTION_FIX):  # the log's advice (once per model): the CLI's names a flag serve lacks
        captions = model.caption(images, beam)
    kinds, max_tokens = last_unfinished(model) or ([None] * len(captions), 0)
    return captions, kinds, max_tokens


def _client_name(filename: str | None, i: int) -> str:
    """The client's file name, only to echo back in messages and results (never used as a path)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:100]
    return name or f"upload {i}"


def _no_duplicate_keys(pairs: list) -> dict:
    """A JSON object with a key twice is refused, as a form field sent twice is: json.loads keeps the last value
    without a word ({"k": 1, "k": 500} searched for 500), where a proxy or a log may read the first."""
    data = dict(pairs)
    if len(data) < len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {twice[:40]!r} appears twice in one object")
    return data


def _json_kind(value) -> str:
    """A JSON value's type as a message says it: 'a list', 'an object', 'a number'..."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", dict: "an object", str: "a string"}.get(type(value), "null")


def _b64(value, where: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a base64 string, got {_json_kind(value)}")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    value = "".join(value.split())  # MIME base64 wraps lines (GNU base64, encodebytes): whitespace is not data
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64; send the image bytes base64-encoded") from None


def _text_list(value, field: str, limit: int, max_chars: int = 200, numbers: bool = False) -> list[str]:
    """A list field (labels, choices): a JSON list as given (an item may hold a comma: "Washington, D.C."), a string
    comma-separated (form lists come already split); blank items refused. ``numbers`` (choices): a JSON number in
    the list is its text, as answer_text reads it (2 and 2.0: "2"); true and false stay refused."""
    item, eg = field.removesuffix("s"), ("red", "blue") if field == "choices" else ("cat", "dog")
    if value is None:
        raise ApiError(400, f'no {field}: send {field}, e.g. "{eg[0]},{eg[1]}" (form) or ["{eg[0]}", "{eg[1]}"] (JSON)')
    if isinstance(value, str):  # a JSON string stays comma-separated, as it always was (a list keeps commas)
        value = [x.strip() for x in value.split(",") if x.strip()]
    if numbers and isinstance(value, list):
        from polymodal.data.answers import answer_text

        value = [answer_text(x) for x in value]  # leaves true/false (and lists, objects) as they are: refused below
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        kind = "strings or numbers" if numbers else "strings"
        raise ApiError(400, f'"{field}" must be a list of {kind}, e.g. ["{eg[0]}", "{eg[1]}"], or one comma-separated string')
    if not value:
        raise ApiError(400, f"no {field} given; pass at least one {item}, e.g. {eg[0]},{eg[1]}")
    blank = next((i for i, x in enumerate(value) if is_blank(x)), None)
    if blank is not None:
        raise ApiError(400, f"{item} {blank} is empty; every {item} needs some text")
    if len(value) > limit:
        raise ApiError(413, f"{len(value)} {field}; the limit is {limit}: send at most {limit} per request")
    if any(len(x) > max_chars for x in value):
        raise ApiError(400, f"a {item} is longer than {max_chars} characters")
    return check_unicode_field(value, field)
