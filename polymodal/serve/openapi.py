"""What /openapi.json says each endpoint answers: its 200 body and its errors, every one {"error": "..."}.

The handlers return JSONResponse, so FastAPI knew neither: every 200 was documented as `{}` and no error at all, so
a client generated from the schema (openapi-python-client, openapi-generator) parsed every answer as None and raised
"unexpected status" on each 400, and /v1/thumb documented a 422 body ({"detail": [...]}) the server never sends.
"""

from __future__ import annotations

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {"title": "Error", "type": "object", "required": ["error"],
                "properties": {"error": {"type": "string", "description": "what was wrong and what to do"}}}

_ERRORS = {
    400: "a bad request: the message names the field and the fix",
    401: "missing or wrong X-API-Key (a server started with --api-key)",
    403: "a Host name this server does not answer without --api-key, a cross-site request from a browser, or a "
         "thumbnail of a link to a file outside the indexed folders (see serve --follow-symlinks)",
    404: "not found",
    405: "this server does not write its index (a read-only folder, or a Qdrant collection)",
    408: "the request body did not arrive within --timeout",
    409: "the index could not be changed (another process is writing it: retry)",
    413: "too large: the body, an image's pixels, or too many items (the limits are in GET /v1/info)",
    415: "a Content-Type other than application/json or multipart/form-data, or a compressed body",
    422: "an image id that is not an id (ids come from /v1/search), or an indexed file that cannot be thumbnailed",
    500: "an internal error (see the server log)",
    503: "busy past --timeout, or the index was deleted or rebuilt with another model (Retry-After says when to retry)",
    507: "the server's disk is full: nothing was changed; retry once space is freed there",
}
_POST = (400, 408, 413, 415, 503)


def replies(ok: dict | None, *errors: int, media_type: str = "application/json", common=(401, 403, 500)) -> dict:
    """FastAPI `responses=` for an endpoint: its 200 body (a JSON schema, or {"type": "string", "format":
    "binary"} with media_type), the 4xx/5xx it may answer besides `common` (every endpoint's) and their body."""
    out: dict = {200: {"content": {media_type: {"schema": ok}}}} if ok is not None else {}
    for status in sorted({*common, *errors}):
        out[status] = {"description": _ERRORS[status], "content": {"application/json": {"schema": ERROR_REF}}}
    return out


def post_replies(ok: dict, *errors: int) -> dict:
    """replies() for a POST endpoint: the errors any request body can meet, and these."""
    return replies(ok, *_POST, *errors)


_REQUEST_ID = ("the request's id in the server's log lines: the client's own X-Request-ID when it is up to 128 "
               "letters, digits or ._~:;/+=@-, else a new one")


def document_request_id(schema: dict) -> None:
    """Every operation takes an optional X-Request-ID header and every answer has one (logs.RequestIdMiddleware)."""
    components = schema.setdefault("components", {})
    components.setdefault("parameters", {})["RequestId"] = {
        "name": "X-Request-ID", "in": "header", "required": False, "description": _REQUEST_ID,
        "schema": {"type": "string", "maxLength": 128}}
    components.setdefault("headers", {})["RequestId"] = {"description": _REQUEST_ID, "schema": {"type": "string"}}
    param, header = {"$ref": "#/components/parameters/RequestId"}, {"$ref": "#/components/headers/RequestId"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if param not in operation.setdefault("parameters", []):  # (FastAPI hands back its cached schema)
                operation["parameters"].append(param)
            for reply in operation.get("responses", {}).values():
                reply.setdefault("headers", {})["X-Request-ID"] = header


def _obj(required: dict, optional: dict | None = None, description: str | None = None) -> dict:
    out = {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}
    return {**out, "description": description} if description else out


_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_LIST = lambda items: {"type": "array", "items": items}  # noqa: E731
_ID = {"anyOf": [_INT, _STR], "description": "an integer for a local index, a UUID for a Qdrant collection"}
_THUMB = {"type": "string", "description": "the thumbnail's URL path (GET it)"}
_WARNINGS = _LIST(_STR)
_SCORED = lambda key: _obj({key: _STR, "score": _NUM})  # noqa: E731

EMBED = _obj({"model": _STR, "dim": _INT, "vectors": _LIST(_LIST(_NUM)),
              "warnings": {**_WARNINGS, "description": "texts the text tower cut at its token limit (their later "
                           "words do not count), texts mostly in words the model does not know"}})
_PATH = {"type": "string", "description": "the file's absolute path on the server; a server started with --hide-paths "
         "(GET /v1/info: index.paths_hidden) gives its file name only: tell same-named files apart by id"}
HIT = _obj({"id": _ID, "path": _PATH, "score": _NUM, "thumb": _THUMB, "rank": _INT, "name": _STR},
           {"host": {"type": "string", "description": "the machine holding the file (a Qdrant collection's hits; "
                     "not under --hide-paths)"}})
SEARCH = _obj({"model": _STR, "k": _INT, "hits": _LIST(HIT), "warnings": _WARNINGS})
CLASSIFY = _obj({"model": _STR, "results": _LIST(_obj({"image": _STR, "labels": _LIST(_SCORED("label"))})),
                 "warnings": _WARNINGS})
VQA = _obj({"model": _STR, "question": _STR, "answer": {"description": "the answer (text for the built-in models)"},
            "warnings": _WARNINGS},
           {"score": _NUM, "alternatives": _LIST(_SCORED("answer"))})
_CUT = {"type": "boolean", "description": "the caption reached the server's max_tokens (word pieces) before the model "
        "ended it, and is cut there: an undertrained model repeats itself up to it (warnings says more)"}
CAPTION = _obj({"model": _STR, "results": _LIST(_obj({"image": _STR, "caption": _STR, "cut": _CUT})),
                "warnings": {**_WARNINGS, "description": "captions cut at max_tokens, and empty ones (the model "
                             "ended them before any word), counted, with what to do"}})
_SKIPPED = _obj({"upload": _STR, "reason": _STR}, {"id": _INT})
INDEX = {"description": "an add answers added/skipped/count, a removal removed/not_found/count",
         "anyOf": [_obj({"added": _LIST(_obj({"id": _INT, "upload": _STR, "thumb": _THUMB})),
                         "skipped": _LIST(_SKIPPED), "count": _INT}),
                   _obj({"removed": _LIST(_INT), "not_found": _LIST(_INT), "count": _INT})]}
_INDEX = _obj({"count": _INT, "model": _STR, "updated": {"type": ["string", "null"]}, "writable": _BOOL,
               "where": {"type": "string", "description": "the index folder or Qdrant collection served (with "
                         "--hide-paths: \"a local index\", or the collection's name)"},
               "paths_hidden": {"type": "boolean", "description": "serve --hide-paths: hits' paths are file names"}})
_NO_INDEX = "null on a server without an index (serve --vqa-model or --caption-model without --db)"
_OR_NULL = lambda kind: {"type": [kind, "null"]}  # noqa: E731
INFO = _obj({
    "model": _obj({"name": _OR_NULL("string"), "key": _OR_NULL("string"), "dim": _OR_NULL("integer"), "vqa": _BOOL,
                   "vqa_model": _OR_NULL("string"), "caption_model": _OR_NULL("string"),
                   "runtime": _OR_NULL("string"), "precision": _OR_NULL("string")},
                  description=f"name, key, dim, runtime and precision are the embedding model's: {_NO_INDEX}"),
    "index": {"anyOf": [_INDEX, {"type": "null"}], "description": _NO_INDEX},
    "batching": _obj({"enabled": _BOOL, "max_batch": _INT, "max_wait_ms": _NUM}),
    "limits": {"type": "object", "additionalProperties": {"type": ["number", "boolean"]},
               "description": "ServeSettings: the request limits"},
})
HEALTH = _obj({"status": {"type": "string", "enum": ["ok"]}})
JPEG = {"type": "string", "format": "binary"}
