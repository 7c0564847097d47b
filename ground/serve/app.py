"""The grounding HTTP API and its web page.

    python -m ground serve --ckpt runs/demo/checkpoints/best.ckpt --media-root data/synthetic \
        --cache data/synthetic/cache.h5

Endpoints (docs/serving.md): `POST /ground` (JSON naming a video, or a multipart upload),
`POST /ground/features` (precomputed per-clip features, JSON capped like uploads),
`GET /videos`, `GET /health`, `GET /media/{path}` (range requests, for the player) and `GET /`
(the page). Every error is JSON `{"error": ...}` with its status code.

Security: every media access goes through `MediaRoot.resolve`, which serves only video files
(`VIDEO_SUFFIXES`) inside the media root: a path with `..`, an absolute path, a hidden component
at any depth, or one whose resolved target (symlinks followed) lies outside the root, is hidden
or is not a video, is refused. JSON bodies are strictly typed (`"5"` is not an integer) and only
`application/json` is read as JSON. Request bodies are capped (413) while they stream in, so an
upload never lands on disk beyond the cap. There is no authentication: bind to 127.0.0.1 (the
default) or put a proxy with authentication in front.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import math
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ground.predict import (
    COARSE_TO_FINE_DEFAULT,
    FeatureDimError,
    Grounder,
    VideoNotFoundError,
    VideoReadError,
)
from ground.serve.streams import StreamNotAllowed, StreamNotFound, StreamRegistry, TooManyStreams

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
VIDEO_SUFFIXES = (".mp4", ".m4v", ".webm", ".mov", ".mkv", ".avi")
"""The only files listed by `/videos`, served by `/media/`, grounded by path and accepted as uploads."""
MAX_PATH_BYTES = 4096
"""Longest media path (Linux's PATH_MAX); longer is 414."""
MAX_NAME_BYTES = 255
"""Longest name of one path component (NAME_MAX): no file can have a longer one, so 404."""
MAX_QUERIES = 32
MAX_QUERY_CHARS = 1000
MAX_JSON_BYTES = 1 << 20
"""JSON bodies are tiny; the upload cap applies to multipart bodies only."""
_CHUNK_BYTES = 1 << 20

Query = Annotated[str, Field(max_length=MAX_QUERY_CHARS)]


# -- request and response models ----------------------------------------------------------------


class GroundRequest(BaseModel):
    """`POST /ground` JSON body. Strict: `"top_k": "5"` or `"coarse_to_fine": "true"` is a 422."""

    model_config = ConfigDict(extra="forbid", strict=True)

    video_id: str = Field(
        min_length=1, max_length=MAX_PATH_BYTES, description="a path under the media root, or a cached id"
    )
    queries: list[Query] = Field(min_length=1, max_length=MAX_QUERIES)
    top_k: int = Field(5, ge=1, le=100)
    coarse_to_fine: bool | None = Field(None, description="None: the server default where possible")


class UploadForm(BaseModel):
    """The form fields beside the `file` of a multipart `POST /ground`.

    Strict, like `GroundRequest`. Form values are text, so `_form_fields` reads the typed ones
    first (`_FORM_TEXT`); text it cannot read stays text and the model refuses it (422).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    queries: list[Query] = Field(min_length=1, max_length=MAX_QUERIES)
    top_k: int = Field(5, ge=1, le=100)
    coarse_to_fine: bool | None = None


_FORM_TEXT: dict[str, Callable[[str], Any]] = {
    "top_k": lambda text: int(text) if text.isascii() and text.isdigit() else text,
    "coarse_to_fine": lambda text: {"true": True, "false": False}.get(text, text),
}
"""How the typed form fields are read from text: only ASCII digits are an integer (not `2.0`,
`+2`, `2_0` or ` 2`) and only `true`/`false` a boolean (not `yes`, `1` or `True`)."""


def _form_fields(items: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The multipart fields other than `file`, for `UploadForm`.

    An empty value is an unset field (the page sends none for "server default"). A field other
    than `queries` given twice stays a list, which the model refuses: nothing is dropped.
    """
    values: dict[str, list[Any]] = {"queries": []}
    for name, value in items:
        if name != "file" and value != "":
            values.setdefault(name, []).append(value)
    fields: dict[str, Any] = {}
    for name, given in values.items():
        if name == "queries" or len(given) > 1:
            fields[name] = given
        elif isinstance(given[0], str) and name in _FORM_TEXT:
            fields[name] = _FORM_TEXT[name](given[0])
        else:
            fields[name] = given[0]
    return fields


class EncodedArray(BaseModel):
    """A float array as base64 of its little-endian bytes (C order)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dtype: Literal["float16", "float32"]
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, max_length=2)
    data: str = Field(description="base64 (RFC 4648, with padding) of prod(shape) little-endian floats")


Matrix = EncodedArray | list[list[float]]
Vector = EncodedArray | list[float]


class QueryFeatures(BaseModel):
    """One precomputed query: token features and the pooled sentence feature of the text encoder."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tokens: Matrix = Field(description="(L, Dt)")
    pooled: Vector = Field(description="(Dt,)")
    label: Query | None = Field(None, description="what the result calls this query")


class FeaturesRequest(BaseModel):
    """`POST /ground/features` JSON body: precomputed per-clip video features and queries.

    Exactly one of `timestamps_sec` / `clip_sec`, and one of `queries` / `query_features`.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    video_features: Matrix = Field(description="(T, Dv) features of the checkpoint's video encoders")
    timestamps_sec: list[tuple[float, float]] | None = Field(None, description="(T, 2) [start, end) per clip")
    clip_sec: float | None = Field(None, gt=0, description="clip i covers [i * clip_sec, (i + 1) * clip_sec)")
    duration_sec: float | None = Field(None, gt=0, description="None: the end of the last clip")
    queries: list[Query] | None = Field(None, min_length=1, max_length=MAX_QUERIES)
    query_features: list[QueryFeatures] | None = Field(None, min_length=1, max_length=MAX_QUERIES)
    top_k: int = Field(5, ge=1, le=100)


_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def _array(value: EncodedArray | list, ndim: int, where: str) -> np.ndarray:
    """The array a request field holds, (ndim)-dimensional, or a 422 naming the field."""
    if isinstance(value, EncodedArray):
        if len(value.shape) != ndim:
            raise HTTPException(422, f"{where}: shape {value.shape} must have {ndim} dims")
        try:
            raw = base64.b64decode(value.data, validate=True)
        except binascii.Error as err:
            raise HTTPException(422, f"{where}: data is not base64 ({err})") from None
        dtype = _DTYPES[value.dtype]
        expected = math.prod(value.shape) * dtype.itemsize
        if len(raw) != expected:
            raise HTTPException(
                422,
                f"{where}: {len(raw)} bytes of data; shape {value.shape} of {value.dtype} needs {expected}",
            )
        return np.frombuffer(raw, dtype=dtype).reshape(value.shape)
    if ndim == 2 and len({len(row) for row in value}) > 1:
        raise HTTPException(422, f"{where}: rows of different lengths")
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != ndim or array.size == 0:
        raise HTTPException(422, f"{where}: expected a non-empty {ndim}-dim array, got shape {array.shape}")
    return array


class StreamRequest(BaseModel):
    """`POST /streams`: watch an allow-listed source for standing queries."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: str = Field(min_length=1, max_length=MAX_PATH_BYTES, description="one of GET /streams' sources")
    queries: list[Query] = Field(min_length=1, max_length=MAX_QUERIES)
    window_sec: float = Field(30.0, gt=0, le=3600, description="seconds each pass sees")
    hop_sec: float = Field(2.0, gt=0, le=3600, description="stream seconds between passes")
    speed: float = Field(1.0, ge=0, le=1000, description="files: x real time; 0 as fast as possible")


class QueriesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    queries: list[Query] = Field(min_length=1, max_length=MAX_QUERIES)


class StreamInfo(BaseModel):
    id: str
    source: str
    queries: list[str]
    finished: bool = Field(description="the source ended or failed (its events stay readable)")


class Window(BaseModel):
    start_sec: float
    end_sec: float
    score: float


class QueryResult(BaseModel):
    query: str
    windows: list[Window]
    presence: float | None
    found: bool
    refined: bool
    saliency: list[tuple[float, float]] | None = Field(description="(t_sec, score) per feature")
    ground_truth: list[tuple[float, float]] | None = Field(
        description="windows of the cached query with this text on this video, when there is one"
    )


class GroundResponse(BaseModel):
    video_id: str
    duration_sec: float
    presence_threshold: float
    results: list[QueryResult]


class VideoEntry(BaseModel):
    id: str = Field(description="what to send as video_id")
    kind: str = Field(description="'cache' (answered from cached features) or 'file' (decoded)")
    url: str | None = Field(
        description="where the player can fetch it, None when it is not under the media root"
    )
    duration_sec: float | None = None
    queries: list[str] = Field(default_factory=list, description="cached query texts of this video")


class VideoList(BaseModel):
    videos: list[VideoEntry]


# -- the media root -----------------------------------------------------------------------------


class MediaPathError(Exception):
    """A media path (a `/media/` URL or a `video_id`) that is refused; carries the path and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{_shown(self.path)}: {self.reason}"


class MalformedMediaPath(MediaPathError):
    """Empty, with a NUL byte, absolute, or with a `..` component (400)."""


class MediaPathOutsideRoot(MediaPathError):
    """Its resolved target (symlinks followed) lies outside the media root (403)."""


class MediaNotFound(MediaPathError):
    """No servable video there: missing, not a file, a hidden component, a non-video suffix, a
    symlink loop, or a name longer than any file name can be (404)."""


class MediaPathTooLong(MediaPathError):
    """Longer than `MAX_PATH_BYTES` (414)."""


def _shown(text: str, limit_chars: int = 120) -> str:
    """`text` quoted for an error line, cut to `limit_chars` with its full length named."""
    if len(text) <= limit_chars:
        return repr(text)
    return f"{text[:limit_chars]!r}... ({len(text.encode('utf-8', 'replace'))} bytes)"


def _unservable(parts: Sequence[str]) -> str | None:
    """Why a path with these components is never served (a hidden component at any depth, or a
    name without a video suffix), or None when it may be."""
    hidden = [part for part in parts if part.startswith(".")]
    if hidden:
        return f"hidden path component {_shown(hidden[0])} is never served"
    if not parts or not parts[-1].lower().endswith(VIDEO_SUFFIXES):
        return f"only videos are served ({', '.join(VIDEO_SUFFIXES)})"
    return None


class MediaRoot:
    """Maps client-supplied relative paths to the videos inside one folder, refusing all else.

    `resolve` is the one gate for every media access (`/media/`, `video_id`s, `/videos`, cached
    videos' source files): what it refuses is neither served, listed, nor grounded.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve(strict=True)
        if not self.root.is_dir():
            raise NotADirectoryError(f"media root {root} is not a folder")

    def resolve(self, relative: str) -> Path:
        """The video file that `relative` (a POSIX path under the root) names.

        Both the path as given and its resolved target (symlinks followed) must have no hidden
        component and a video suffix, and the target must be a file inside the root.

        Raises:
            MalformedMediaPath: empty, NUL, absolute or `..`.
            MediaPathTooLong: over `MAX_PATH_BYTES` bytes (UTF-8).
            MediaNotFound: missing, not a file, hidden, not a video, a symlink loop, unreadable,
                or a component over `MAX_NAME_BYTES` bytes (no file can have such a name).
            MediaPathOutsideRoot: the resolved target lies outside the root.
        """
        if not relative or "\x00" in relative:
            raise MalformedMediaPath(relative, "empty or malformed path")
        if len(relative.encode("utf-8", "replace")) > MAX_PATH_BYTES:
            raise MediaPathTooLong(relative, f"path longer than {MAX_PATH_BYTES} bytes")
        posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or relative.startswith("\\"):
            raise MalformedMediaPath(relative, "absolute paths are not allowed")
        if ".." in posix.parts or ".." in windows.parts:
            raise MalformedMediaPath(relative, "'..' is not allowed in paths")
        if any(len(part.encode("utf-8", "replace")) > MAX_NAME_BYTES for part in posix.parts):
            raise MediaNotFound(relative, f"a path component is longer than {MAX_NAME_BYTES} bytes")
        if (why := _unservable(posix.parts)) is not None:
            raise MediaNotFound(relative, why)
        try:
            resolved = (self.root / posix).resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise MediaNotFound(relative, "no such video under the media root") from None
        except RuntimeError:  # Path.resolve on a symlink loop (Python < 3.13)
            raise MediaNotFound(relative, "symlink loop") from None
        except OSError as err:  # ELOOP on Python >= 3.13, EACCES, ...
            raise MediaNotFound(relative, f"cannot be resolved: {err.strerror}") from None
        if not resolved.is_relative_to(self.root):
            raise MediaPathOutsideRoot(relative, "points outside the media root")
        if (why := _unservable(resolved.relative_to(self.root).parts)) is not None:
            raise MediaNotFound(relative, f"links to a file that is not served: {why}")
        if not resolved.is_file():
            raise MediaNotFound(relative, "not a file")
        return resolved

    def relative(self, path: str | os.PathLike) -> str | None:
        """`path` relative to the root when `resolve` would serve it, else None."""
        try:
            rel = Path(path).resolve().relative_to(self.root).as_posix()
            self.resolve(rel)
        except (OSError, RuntimeError, ValueError, MediaPathError):
            # Not under the root (ValueError), a symlink loop (RuntimeError) or refused.
            return None
        return rel

    def videos(self) -> list[str]:
        """The servable videos under the root, as root-relative POSIX paths, sorted.

        Hidden folders and files, and files without a video suffix, are skipped; a video file
        that `resolve` refuses (a symlink loop, or a target outside the root) and a folder that
        cannot be read are left out and logged.
        """

        def unreadable(err: OSError) -> None:
            log.warning("media: cannot read folder %s (%s); not listed", err.filename, err.strerror)

        found = []
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable):
            dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
            for name in sorted(filenames):
                if _unservable([name]) is not None:
                    continue
                rel = (Path(dirpath) / name).relative_to(self.root).as_posix()
                try:
                    self.resolve(rel)
                except MediaPathError as err:
                    log.warning("media: not listed: %s", err)
                    continue
                found.append(rel)
        return found


MEDIA_PATH_STATUS: dict[type[MediaPathError], int] = {
    MalformedMediaPath: 400,
    MediaPathOutsideRoot: 403,
    MediaNotFound: 404,
    MediaPathTooLong: 414,
}


GROUNDING_ERROR_STATUS: dict[type[Exception], int] = {
    VideoNotFoundError: 404,
    VideoReadError: 400,
    FeatureDimError: 422,
    StreamNotAllowed: 403,
    StreamNotFound: 404,
    TooManyStreams: 429,
    ValueError: 400,
}
"""Status of each error `Grounder` raises for bad input, first match wins (FeatureDimError is a
ValueError); anything else is a bug and a 500."""


def _grounding_status(err: Exception) -> int | None:
    return next((code for kind, code in GROUNDING_ERROR_STATUS.items() if isinstance(err, kind)), None)


# -- request body limits ------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


def _capped(receive: Callable[[], Awaitable[dict]], limit_bytes: int) -> Callable[[], Awaitable[dict]]:
    """An ASGI receive that raises once more than `limit_bytes` of body have arrived."""
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit_bytes:
                raise _BodyTooLarge
        return message

    return wrapped


def _too_large(limit_bytes: int) -> HTTPException:
    return HTTPException(413, f"request body exceeds the limit of {limit_bytes / 2**20:.1f} MiB")


def _check_length(request: Request, limit_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise _too_large(limit_bytes)


BodyKind = Literal["json", "multipart"]


def _body_kind(content_type: str) -> BodyKind:
    """What a request body is, from its Content-Type header, or a 415.

    JSON is exactly `application/json`, with an optional `charset=utf-8` (RFC 8259: JSON is
    UTF-8). Look-alikes (`application/jsonp`) and `+json` types (`application/merge-patch+json`,
    ...) name other formats or semantics that this API does not speak, so they are refused.
    """
    media_type, *params = (part.strip() for part in content_type.split(";"))
    media_type = media_type.lower()
    if media_type == "multipart/form-data":
        return "multipart"
    if media_type != "application/json":
        raise HTTPException(
            415, f"content type {_shown(media_type)}: send application/json or multipart/form-data"
        )
    for param in params:
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise HTTPException(415, f"JSON bodies are UTF-8; got charset {_shown(charset)}")
    return "json"


def _problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as JSON: where, what and which kind, never the input itself.

    The input is left out because it may be bytes that are not UTF-8 (a body that is not text)
    or a megabyte long; `loc` names the item.
    """
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]


# -- the app ------------------------------------------------------------------------------------


def create_app(
    grounder_or_ckpt: Grounder | str | os.PathLike,
    media_root: str | os.PathLike,
    *,
    max_upload_mb: float = 200,
    cache: str | os.PathLike | None = None,
    allowed_sources: Sequence[str] = (),
) -> FastAPI:
    """Build the API around a Grounder (or a checkpoint path, loaded with `cache`).

    Args:
        grounder_or_ckpt: a loaded Grounder, or the checkpoint to load.
        media_root: folder whose videos are listed, served and grounded.
        max_upload_mb: largest multipart upload in MiB (413 above it).
        cache: cache to answer cached video ids from (only with a checkpoint path; a Grounder
            carries its own).
        allowed_sources: the live sources (URLs, devices, files) `POST /streams` may open.
    """
    if isinstance(grounder_or_ckpt, Grounder):
        if cache is not None:
            raise ValueError(
                "create_app: pass the cache to Grounder.from_checkpoint, not beside a loaded Grounder"
            )
        grounder = grounder_or_ckpt
    else:
        grounder = Grounder.from_checkpoint(grounder_or_ckpt, cache=cache)
    media = MediaRoot(media_root)
    upload_limit = int(max_upload_mb * 2**20)
    cached_ids = set(grounder.cached_video_ids)
    # Cached videos whose source file lies under the media root can be played by the page.
    cached_url: dict[str, str | None] = {}
    source_vid: dict[str, str] = {}  # media-relative path -> cached id
    cached_queries: dict[str, list[str]] = {}
    if grounder.cache is not None:
        for item in grounder.cache.queries():
            cached_queries.setdefault(item.vid, []).append(item.text)
        for vid in grounder.cached_video_ids:
            source = grounder.cache.video_meta(vid).source
            rel = media.relative(source) if source else None
            cached_url[vid] = rel
            if rel is not None:
                source_vid[rel] = vid

    app = FastAPI(
        title="groundcache grounding API",
        description="Find the moments of a video that sentences describe.",
        version="1",
    )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request", "detail": _problems(exc.errors())}, status_code=422)

    @app.exception_handler(MediaPathError)
    async def media_path_error(request: Request, exc: MediaPathError) -> JSONResponse:
        status = next(code for kind, code in MEDIA_PATH_STATUS.items() if isinstance(exc, kind))
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "checkpoint": Path(grounder.checkpoint).name,
            "video_encoders": [s.name for s in grounder.video_specs],
            "text_encoder": grounder.text_spec.name,
            "cached_videos": len(cached_ids),
            "presence_threshold": grounder.presence_threshold,
            "coarse_to_fine_default": COARSE_TO_FINE_DEFAULT,
            "max_upload_mb": max_upload_mb,
        }

    @app.get("/videos", response_model=VideoList)
    def videos() -> VideoList:
        entries = []
        for vid in grounder.cached_video_ids:
            rel = cached_url[vid]
            entries.append(
                VideoEntry(
                    id=vid,
                    kind="cache",
                    url=None if rel is None else f"/media/{rel}",
                    duration_sec=grounder.cache.video_meta(vid).duration_sec,
                    queries=cached_queries.get(vid, []),
                )
            )
        for rel in media.videos():
            if rel not in source_vid:
                entries.append(VideoEntry(id=rel, kind="file", url=f"/media/{rel}"))
        return VideoList(videos=entries)

    @app.get("/media/{path:path}")
    def media_file(path: str) -> FileResponse:
        # FileResponse answers Range requests (206), which the player needs to seek.
        return FileResponse(media.resolve(path))

    @app.post(
        "/ground",
        response_model=GroundResponse,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": GroundRequest.model_json_schema()},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file", "queries"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "queries": {"type": "array", "items": {"type": "string"}},
                                "top_k": {"type": "integer", "default": 5},
                                "coarse_to_fine": {"type": "boolean"},
                            },
                        }
                    },
                },
                "required": True,
            }
        },
    )
    async def ground(request: Request) -> JSONResponse:
        if _body_kind(request.headers.get("content-type", "")) == "multipart":
            return await _ground_upload(request)
        req = await _json(request, GroundRequest)
        if req.video_id in cached_ids:
            video: str | Path = req.video_id
            vid = req.video_id
        else:
            try:
                video = media.resolve(req.video_id)
            except MediaNotFound as err:
                raise MediaNotFound(req.video_id, f"not a cached video id, and {err.reason}") from None
            vid = source_vid.get(media.relative(video) or "")
        results = await _run(video, req.queries, req.top_k, req.coarse_to_fine)
        return _respond(req.video_id, results, vid)

    @app.post(
        "/ground/features",
        response_model=GroundResponse,
        openapi_extra={
            "requestBody": {
                "content": {"application/json": {"schema": FeaturesRequest.model_json_schema()}},
                "required": True,
            }
        },
    )
    async def ground_features(request: Request) -> JSONResponse:
        # Features are as large as a video's upload: the upload cap, not the small JSON one.
        req = await _json(request, FeaturesRequest, limit_bytes=upload_limit)
        text_features = labels = None
        if req.query_features is not None:
            text_features = [
                (
                    _array(q.tokens, 2, f"query_features[{i}].tokens"),
                    _array(q.pooled, 1, f"query_features[{i}].pooled"),
                )
                for i, q in enumerate(req.query_features)
            ]
            labels = [q.label or f"features[{i}]" for i, q in enumerate(req.query_features)]
        results = await _in_thread(
            grounder.ground_features,
            _array(req.video_features, 2, "video_features"),
            req.queries,
            timestamps_sec=None if req.timestamps_sec is None else np.asarray(req.timestamps_sec),
            clip_sec=req.clip_sec,
            duration_sec=req.duration_sec,
            text_features=text_features,
            labels=labels,
            top_k=req.top_k,
        )
        return _respond("features", results, None)

    async def _ground_upload(request: Request) -> JSONResponse:
        _check_length(request, upload_limit)
        limited = Request(request.scope, _capped(request.receive, upload_limit))
        try:
            form = await limited.form(max_files=1, max_fields=MAX_QUERIES + 4)
        except _BodyTooLarge:
            raise _too_large(upload_limit) from None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart request needs a 'file' part with the video")
            suffix = Path(upload.filename or "").suffix.lower()
            if suffix not in VIDEO_SUFFIXES:
                raise HTTPException(
                    400,
                    f"upload {_shown(upload.filename or '')}: expected one of {', '.join(VIDEO_SUFFIXES)}",
                )
            try:
                params = UploadForm.model_validate(_form_fields(form.multi_items()))
            except ValidationError as err:
                raise RequestValidationError(err.errors(include_url=False)) from None
            with tempfile.TemporaryDirectory(prefix="groundcache-upload-") as tmp:
                path = Path(tmp) / f"upload{suffix}"
                with path.open("wb") as f:
                    while chunk := await upload.read(_CHUNK_BYTES):
                        f.write(chunk)
                results = await _run(path, params.queries, params.top_k, params.coarse_to_fine)
            return _respond(upload.filename or "upload", results, None)
        finally:
            await form.close()

    async def _run(
        video: str | Path, queries: Sequence[str], top_k: int, coarse_to_fine: bool | None
    ) -> list:
        # Inference is CPU/GPU bound: keep it off the event loop.
        return await _in_thread(grounder.ground, video, queries, top_k=top_k, coarse_to_fine=coarse_to_fine)

    async def _in_thread(function: Callable[..., list], *args: Any, **kwargs: Any) -> list:
        try:
            return await run_in_threadpool(function, *args, **kwargs)
        except Exception as err:
            status = _grounding_status(err)
            if status is None:
                raise
            raise HTTPException(status, str(err)) from None

    def _respond(video_id: str, results: list, vid: str | None) -> JSONResponse:
        response = GroundResponse(
            video_id=video_id,
            duration_sec=results[0].duration_sec,
            presence_threshold=grounder.presence_threshold,
            results=[
                QueryResult(
                    query=r.query,
                    windows=[Window(start_sec=s, end_sec=e, score=c) for s, e, c in r.windows],
                    presence=r.presence,
                    found=r.found,
                    refined=r.refined,
                    saliency=r.saliency,
                    ground_truth=None if vid is None else grounder.ground_truth(vid, r.query),
                )
                for r in results
            ],
        )
        return JSONResponse(response.model_dump())

    streams = StreamRegistry(grounder, allowed_sources)
    app.router.on_shutdown.append(streams.close_all)

    @app.exception_handler(StreamNotAllowed)
    @app.exception_handler(StreamNotFound)
    @app.exception_handler(TooManyStreams)
    async def stream_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=_grounding_status(exc))

    async def _json(request: Request, model: type[BaseModel], limit_bytes: int = MAX_JSON_BYTES) -> Any:
        """The request's JSON body as `model`: 415 unless JSON, 413 past `limit_bytes`, 422 if invalid."""
        if _body_kind(request.headers.get("content-type", "")) != "json":
            raise HTTPException(415, f"{request.method} {request.url.path} takes application/json")
        _check_length(request, limit_bytes)
        try:
            body = await Request(request.scope, _capped(request.receive, limit_bytes)).body()
        except _BodyTooLarge:
            raise _too_large(limit_bytes) from None
        try:
            return model.model_validate_json(body)
        except ValidationError as err:
            raise RequestValidationError(err.errors(include_url=False)) from None

    def _info(stream) -> StreamInfo:
        return StreamInfo(
            id=stream.id, source=stream.source, queries=stream.watcher.queries, finished=stream.finished
        )

    @app.get("/streams")
    def list_streams() -> dict[str, Any]:
        return {
            "allowed_sources": streams.allowed,
            "streams": [_info(s).model_dump() for s in streams.streams.values()],
        }

    @app.post("/streams", status_code=201, response_model=StreamInfo)
    async def open_stream(request: Request) -> JSONResponse:
        req = await _json(request, StreamRequest)
        stream = await _in_thread(
            streams.open,
            req.source,
            req.queries,
            window_sec=req.window_sec,
            hop_sec=req.hop_sec,
            speed=req.speed,
        )
        return JSONResponse(_info(stream).model_dump(), status_code=201)

    @app.post("/streams/{stream_id}/queries", response_model=StreamInfo)
    async def add_queries(stream_id: str, request: Request) -> StreamInfo:
        stream = streams.get(stream_id)
        req = await _json(request, QueriesRequest)
        await _in_thread(stream.watcher.add_queries, req.queries)
        return _info(stream)

    @app.delete("/streams/{stream_id}/queries", response_model=StreamInfo)
    def remove_queries(stream_id: str, query: Annotated[list[str] | None, QueryParam()] = None) -> StreamInfo:
        """`?query=...&query=...`: stop watching these (an open occurrence gets its `ended` event)."""
        stream = streams.get(stream_id)
        if not query:
            raise HTTPException(400, "name the queries to remove: ?query=...")
        unknown = [q for q in query if q not in stream.watcher.queries]
        if unknown:
            raise HTTPException(404, f"stream {stream_id}: no standing query {_shown(unknown[0])}")
        stream.watcher.remove_queries(query)
        return _info(stream)

    @app.delete("/streams/{stream_id}", response_model=StreamInfo)
    def close_stream(stream_id: str) -> StreamInfo:
        return _info(streams.close(stream_id))

    @app.get("/streams/{stream_id}/events")
    async def stream_events(stream_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: every event of the stream from the first (or after `Last-Event-ID`),
        each `id: N` + `data: {json}`; the stream closes after the `stopped` event."""
        stream = streams.get(stream_id)
        last = request.headers.get("last-event-id", "")
        start = int(last) + 1 if last.isascii() and last.isdigit() else 0

        async def events():
            seq = start
            while True:
                batch, missed = stream.since(seq)
                if missed:
                    yield f"event: missed\ndata: {json.dumps({'missed': missed})}\n\n"
                for n, event in batch:
                    yield f"id: {n}\ndata: {json.dumps(event)}\n\n"
                    seq = n + 1
                    if event.get("state") == "stopped":
                        return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve_main(argv: Sequence[str] | None = None) -> int:
    """`python -m ground serve --ckpt M.ckpt --media-root DIR [--cache C.h5] [--host H --port P]`."""
    parser = argparse.ArgumentParser(
        prog="python -m ground serve", description="Serve the grounding API and page."
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `python -m ground fit`")
    parser.add_argument("--media-root", required=True, help="folder of the videos to list, play and ground")
    parser.add_argument("--cache", default=None, help="cache made with the checkpoint's encoders")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (no authentication: keep it local)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=200, help="largest upload (413 above)")
    parser.add_argument("--device", default="cpu", help="torch device of the network and encoders")
    parser.add_argument(
        "--allow-source",
        action="append",
        default=[],
        help="a live source (URL, device, file) that POST /streams may watch (repeat for several)",
    )
    args = parser.parse_args(argv)

    import uvicorn

    grounder = Grounder.from_checkpoint(args.ckpt, device=args.device, cache=args.cache)
    app = create_app(
        grounder, args.media_root, max_upload_mb=args.max_upload_mb, allowed_sources=args.allow_source
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without authentication; anyone who can reach it can use it", args.host)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
