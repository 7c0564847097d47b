"""The HTTP API: every endpoint, every security limit, errors as JSON."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest
import torch
from fastapi.testclient import TestClient
from test_predict import World, grounding_world, query_text

from ground.predict import Grounder
from ground.serve.app import STATIC_DIR, create_app

NODE = shutil.which("node")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    torch.set_num_threads(1)
    return grounding_world(tmp_path_factory)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, world: World) -> None:
    """A plain (uncached) file under the root, and a symlink under it to a video outside it."""
    extra = world.root / "more" / "clip.mp4"
    extra.parent.mkdir(exist_ok=True)
    extra.write_bytes(world.video("dune").read_bytes())
    secret = tmp_path_factory.mktemp("outside") / "secret.mp4"
    secret.write_bytes(world.video("amber").read_bytes())
    link = world.root / "videos" / "escape.mp4"
    if not link.is_symlink():
        os.symlink(secret, link)


@pytest.fixture(scope="module")
def grounder(world: World) -> Grounder:
    return Grounder.from_checkpoint(world.ckpt, cache=world.cache)


@pytest.fixture(scope="module")
def client(grounder: Grounder, world: World, media: None) -> TestClient:
    # A one-MiB cap keeps the oversize test small.
    return TestClient(create_app(grounder, world.root, max_upload_mb=1))


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory, world: World) -> Path:
    """A media root with one servable video and everything that must be neither listed nor served."""
    root = tmp_path_factory.mktemp("hostile")
    video = world.video("dune").read_bytes()
    (root / "videos").mkdir()
    (root / "videos" / "ok.mp4").write_bytes(video)
    (root / "videos" / ".secret.mp4").write_bytes(video)  # a hidden video file
    (root / ".hidden").mkdir()
    (root / ".hidden" / "clip.mp4").write_bytes(video)  # a video in a hidden folder
    (root / ".env").write_text("TOKEN=do-not-serve\n")
    (root / "notes.txt").write_text("not a video\n")
    os.symlink("loop.mp4", root / "loop.mp4")  # a symlink loop: loop.mp4 -> loop.mp4
    os.symlink("pong.mp4", root / "ping.mp4")  # a two-link loop
    os.symlink("ping.mp4", root / "pong.mp4")
    os.symlink(".", root / "videos" / "self")  # a folder loop (os.walk does not follow it)
    outside = tmp_path_factory.mktemp("hostile_outside") / "secret.mp4"
    outside.write_bytes(video)
    os.symlink(outside, root / "escape.mp4")
    os.symlink("../.hidden/clip.mp4", root / "videos" / "alias.mp4")  # a video name for a hidden file
    os.symlink("../notes.txt", root / "videos" / "text.mp4")  # a video name for a text file
    return root


@pytest.fixture(scope="module")
def hostile(grounder: Grounder, hostile_root: Path) -> TestClient:
    return TestClient(create_app(grounder, hostile_root))


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_health(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["video_encoders"] == ["tiny_clip"] and body["text_encoder"] == "tiny_clip"
    assert body["cached_videos"] == 4 and 0 <= body["presence_threshold"] <= 1


def test_videos_lists_cached_ids_and_plain_files(client: TestClient) -> None:
    videos = {v["id"]: v for v in client.get("/videos").json()["videos"]}
    # Cached videos whose source is under the media root are playable and listed once, by id.
    assert videos["amber"] == {
        "id": "amber",
        "kind": "cache",
        "url": "/media/videos/amber.mp4",
        "duration_sec": pytest.approx(8.0),
        "queries": [query_text("red"), query_text("blue")],
    }
    assert "videos/amber.mp4" not in videos
    assert (
        videos["more/clip.mp4"]["kind"] == "file" and videos["more/clip.mp4"]["url"] == "/media/more/clip.mp4"
    )
    assert "videos/escape.mp4" not in videos  # its target lies outside the root


def test_media_supports_range_requests(client: TestClient, world: World) -> None:
    data = world.video("amber").read_bytes()
    whole = client.get("/media/videos/amber.mp4")
    assert whole.status_code == 200 and whole.content == data
    part = client.get("/media/videos/amber.mp4", headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == data[10:100]


def test_ground_a_cached_video_with_ground_truth(client: TestClient) -> None:
    response = client.post(
        "/ground", json={"video_id": "cedar", "queries": [query_text("yellow"), "a pink cat"], "top_k": 3}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["video_id"] == "cedar" and body["duration_sec"] == pytest.approx(6.0)
    known, new = body["results"]
    assert known["ground_truth"] == [[0.5, 2.5]]
    assert new["ground_truth"] is None
    for result in body["results"]:
        assert 1 <= len(result["windows"]) <= 3
        for w in result["windows"]:
            assert 0 <= w["start_sec"] <= w["end_sec"] <= body["duration_sec"]
        assert isinstance(result["found"], bool) and 0 <= result["presence"] <= 1
        assert len(result["saliency"]) == 6


def test_ground_a_media_file(client: TestClient) -> None:
    response = client.post(
        "/ground", json={"video_id": "more/clip.mp4", "queries": [query_text("red")], "coarse_to_fine": True}
    )
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["windows"] and result["ground_truth"] is None
    # Same file as a cached video: its ground truth is known through the source path.
    response = client.post("/ground", json={"video_id": "videos/dune.mp4", "queries": [query_text("red")]})
    assert response.json()["results"][0]["ground_truth"] == [[4.0, 6.5]]


def test_upload(client: TestClient, world: World) -> None:
    with world.video("basil").open("rb") as f:
        response = client.post(
            "/ground",
            files={"file": ("basil.mp4", f, "video/mp4")},
            data={"queries": [query_text("green"), query_text("red")], "top_k": "2"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration_sec"] == pytest.approx(9.0) and len(body["results"]) == 2
    assert all(1 <= len(r["windows"]) <= 2 for r in body["results"])


def test_oversize_upload_is_refused(client: TestClient) -> None:
    big = b"\0" * (1024 * 1024 + 1)
    response = client.post("/ground", files={"file": ("big.mp4", big, "video/mp4")}, data={"queries": ["x"]})
    assert "exceeds" in _error(response, 413)


def test_oversize_upload_without_content_length_is_cut_off(client: TestClient) -> None:
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MiB in all, streamed with chunked encoding
        yield b"\r\n--b--\r\n"

    response = client.post(
        "/ground", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    _error(response, 413)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"top_k": "2.0"}, ["top_k"]),
        ({"top_k": "+2"}, ["top_k"]),
        ({"top_k": " 2"}, ["top_k"]),
        ({"top_k": ["2", "3"]}, ["top_k"]),  # given twice: not silently one of them
        ({"coarse_to_fine": "yes"}, ["coarse_to_fine"]),
        ({"coarse_to_fine": "1"}, ["coarse_to_fine"]),
        ({"unknown": "1"}, ["unknown"]),
    ],
)
def test_upload_fields_are_strict(client: TestClient, fields: dict, loc: list) -> None:
    # Refused before the (undecodable) file is looked at.
    response = client.post(
        "/ground", files={"file": ("a.mp4", b"abc", "video/mp4")}, data={"queries": ["x"], **fields}
    )
    _error(response, 422)
    assert [problem["loc"] for problem in response.json()["detail"]] == [loc]


def test_upload_problems(client: TestClient) -> None:
    _error(
        client.post("/ground", files={"file": ("a.txt", b"abc", "text/plain")}, data={"queries": ["x"]}), 400
    )
    _error(
        client.post("/ground", files={"file": ("a.mp4", b"abc", "video/mp4")}, data={"queries": ["x"]}), 400
    )
    _error(client.post("/ground", files={"file": ("a.mp4", b"abc", "video/mp4")}), 422)  # no queries
    _error(client.post("/ground", data={"queries": ["x"]}, files={"other": ("a", b"", "x/y")}), 400)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"video_id": "nosuch", "queries": ["x"]}, 404),
        ({"video_id": "videos/nosuch.mp4", "queries": ["x"]}, 404),
        ({"video_id": "../outside.mp4", "queries": ["x"]}, 400),
        ({"video_id": "videos/../../outside.mp4", "queries": ["x"]}, 400),
        ({"video_id": "/etc/passwd", "queries": ["x"]}, 400),
        ({"video_id": "videos/escape.mp4", "queries": ["x"]}, 403),
        ({"video_id": "amber", "queries": [""]}, 400),
        ({"video_id": "amber", "queries": ["   "]}, 400),
        ({"video_id": "amber", "queries": []}, 422),
        ({"video_id": "amber", "queries": ["x"], "top_k": 0}, 422),
        ({"video_id": "amber", "queries": "x"}, 422),
        ({"video_id": "amber", "queries": ["x"], "unknown": 1}, 422),
        ({"queries": ["x"]}, 422),
        ({"video_id": "a" * 4097, "queries": ["x"]}, 422),
        ({"video_id": "amber", "queries": ["x"], "coarse_to_fine": True}, 400),  # cached: no frames
    ],
)
def test_bad_ground_requests(client: TestClient, body: dict, status: int) -> None:
    _error(client.post("/ground", json=body), status)


def test_malformed_json_and_content_type(client: TestClient) -> None:
    _error(client.post("/ground", content=b"{not json", headers={"content-type": "application/json"}), 422)
    _error(client.post("/ground", content=b"x", headers={"content-type": "text/plain"}), 415)


def test_a_body_that_is_not_utf8_is_a_422(client: TestClient) -> None:
    body = b'{"video_id": "amber", "queries": ["caf\xe9 \xff\xfe"]}'  # Latin-1 and stray bytes
    response = client.post("/ground", content=body, headers={"content-type": "application/json"})
    assert _error(response, 422) == "invalid request"
    [problem] = response.json()["detail"]
    assert problem["type"] == "json_invalid" and "unicode" in problem["msg"]
    assert "input" not in problem  # the body is not echoed (it may not be text at all)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/jsonp",
        "application/json-seq",
        "application/merge-patch+json",
        "text/json",
        "application/json; charset=latin-1",
        "multipart/form-dataX; boundary=b",
        "",
    ],
)
def test_only_application_json_is_read_as_json(client: TestClient, content_type: str) -> None:
    body = b'{"video_id": "amber", "queries": ["x"]}'
    error = _error(client.post("/ground", content=body, headers={"content-type": content_type}), 415)
    assert "application/json" in error or "UTF-8" in error


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", 'Application/JSON; charset="UTF-8"']
)
def test_json_with_a_utf8_charset_is_read(client: TestClient, content_type: str) -> None:
    body = '{"video_id": "cedar", "queries": ["café"], "top_k": 2}'.encode()
    response = client.post("/ground", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["query"] == "café"


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("top_k", "5", "int_type"),
        ("top_k", 5.0, "int_type"),
        ("top_k", True, "int_type"),
        ("coarse_to_fine", "false", "bool_type"),
        ("coarse_to_fine", 0, "bool_type"),
        ("video_id", 5, "string_type"),
        ("queries", ["x", 1], "string_type"),
    ],
)
def test_json_types_are_strict(client: TestClient, field: str, value: object, kind: str) -> None:
    body = {"video_id": "amber", "queries": ["x"], field: value}
    response = client.post("/ground", json=body)
    _error(response, 422)
    [problem] = response.json()["detail"]
    assert problem["loc"][0] == field and problem["type"] == kind


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/media/%2e%2e/outside.mp4", 400),
        ("/media/videos/%2e%2e/%2e%2e/x.mp4", 400),
        ("/media//etc/passwd", 400),
        ("/media/videos/escape.mp4", 403),
        ("/media/videos/nosuch.mp4", 404),
        ("/media/videos", 404),
        ("/nosuch", 404),
    ],
)
def test_media_refuses_paths_outside_the_root(client: TestClient, path: str, status: int) -> None:
    _error(client.get(path), status)


def test_videos_lists_only_servable_videos(hostile: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ground.serve.app"):
        response = hostile.get("/videos")
    assert response.status_code == 200, response.text
    files = [v["id"] for v in response.json()["videos"] if v["kind"] == "file"]
    assert files == ["videos/ok.mp4"]
    # The video names that were refused are logged with why; hidden and non-video files are not
    # videos and are skipped without a word.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for name, why in [
        ("'loop.mp4'", "symlink loop"),
        ("'ping.mp4'", "symlink loop"),
        ("'pong.mp4'", "symlink loop"),
        ("'escape.mp4'", "outside the media root"),
        ("'videos/alias.mp4'", "hidden path component '.hidden'"),
        ("'videos/text.mp4'", "only videos are served"),
    ]:
        assert any(
            line.startswith(f"media: not listed: {name}: ") and why in line for line in logged.splitlines()
        )
    assert ".env" not in logged and "secret" not in logged


@pytest.mark.parametrize(
    ("path", "status", "why"),
    [
        (".env", 404, "hidden path component '.env'"),
        ("%2eenv", 404, "hidden path component '.env'"),
        (".hidden/clip.mp4", 404, "hidden path component '.hidden'"),
        ("videos/.secret.mp4", 404, "hidden path component '.secret.mp4'"),
        ("notes.txt", 404, "only videos are served"),
        ("loop.mp4", 404, "symlink loop"),
        ("ping.mp4", 404, "symlink loop"),
        ("videos/self/ok.mp4", 200, ""),  # a folder link inside the root is followed
        ("escape.mp4", 403, "outside the media root"),
        ("videos/alias.mp4", 404, "links to a file that is not served"),
        ("videos/text.mp4", 404, "links to a file that is not served"),
        ("a" * 300 + ".mp4", 404, "longer than 255 bytes"),
        ("videos/ok.mp4", 200, ""),
    ],
)
def test_media_serves_only_listed_videos(
    hostile: TestClient, hostile_root: Path, path: str, status: int, why: str
) -> None:
    response = hostile.get(f"/media/{path}")
    if status == 200:
        assert (
            response.status_code == 200
            and response.content == (hostile_root / "videos" / "ok.mp4").read_bytes()
        )
        return
    error = _error(response, status)
    assert why in error
    assert len(error) < 400  # a 100 KiB path is named, not echoed


def _asgi_get(app, path: str) -> tuple[int, dict]:
    """GET `path` straight through the ASGI app: status and JSON body.

    For paths over httpx's 64 KiB URL limit, which a server without one (uvicorn with httptools)
    hands to the app as they are.
    """
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("testclient", 50000),
    }
    anyio.run(app, scope, receive, send)
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


def test_a_100_kib_media_path_is_a_414(hostile: TestClient) -> None:
    status, body = _asgi_get(hostile.app, "/media/" + "a" * 100 * 1024)
    assert status == 414
    assert "longer than 4096 bytes" in body["error"] and "(102400 bytes)" in body["error"]
    assert len(body["error"]) < 400  # named, not echoed


@pytest.mark.parametrize(
    ("video_id", "status"),
    [
        (".hidden/clip.mp4", 404),
        ("notes.txt", 404),
        ("loop.mp4", 404),
        ("escape.mp4", 403),
        (".env", 404),
        ("videos/" + "\u00e9" * 2100 + ".mp4", 414),  # 2111 characters, 4211 bytes of UTF-8
    ],
)
def test_ground_refuses_what_media_refuses(hostile: TestClient, video_id: str, status: int) -> None:
    _error(hostile.post("/ground", json={"video_id": video_id, "queries": ["x"]}), status)


@pytest.mark.skipif(NODE is None, reason="needs node (Debian package nodejs) to run the page's script")
def test_the_pages_requests_pass_strict_validation(client: TestClient, world: World) -> None:
    """The page's own script builds the requests (stub DOM, top-k 3, coarse-to-fine off)."""
    harness = Path(__file__).with_name("page_requests.js")
    run = subprocess.run(
        [NODE, str(harness), str(STATIC_DIR / "app.js")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    as_json, as_form = json.loads(run.stdout)
    assert json.loads(as_json["json"])["top_k"] == 3  # a number, not "3"
    response = client.post("/ground", content=as_json["json"], headers=as_json["headers"])
    assert response.status_code == 200, response.text
    assert [r["query"] for r in response.json()["results"]] == [query_text("red"), "a purple triangle spins"]
    assert all(1 <= len(r["windows"]) <= 3 for r in response.json()["results"])

    fields: dict[str, list[str]] = {}
    for name, value in as_form["form"]:
        fields.setdefault(name, []).append(value)
    with world.video("basil").open("rb") as f:
        response = client.post("/ground", files={"file": ("clip.mp4", f, "video/mp4")}, data=fields)
    assert response.status_code == 200, response.text
    assert all(1 <= len(r["windows"]) <= 3 for r in response.json()["results"])


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="timeline"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_create_app_from_a_checkpoint_path(world: World) -> None:
    app = create_app(world.ckpt, world.root, cache=world.cache)
    assert TestClient(app).get("/health").json()["cached_videos"] == 4
    with pytest.raises(ValueError, match="Grounder.from_checkpoint"):
        create_app(Grounder.from_checkpoint(world.ckpt), world.root, cache=world.cache)
