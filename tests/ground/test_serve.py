"""The HTTP API: every endpoint, every security limit, errors as JSON."""

from __future__ import annotations

import os

import pytest
import torch
from fastapi.testclient import TestClient
from test_predict import World, grounding_world, query_text

from ground.predict import Grounder
from ground.serve.app import create_app


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
def client(world: World, media: None) -> TestClient:
    grounder = Grounder.from_checkpoint(world.ckpt, cache=world.cache)
    # A one-MiB cap keeps the oversize test small.
    return TestClient(create_app(grounder, world.root, max_upload_mb=1))


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
        ({"video_id": "amber", "queries": ["x"], "coarse_to_fine": True}, 400),  # cached: no frames
    ],
)
def test_bad_ground_requests(client: TestClient, body: dict, status: int) -> None:
    _error(client.post("/ground", json=body), status)


def test_malformed_json_and_content_type(client: TestClient) -> None:
    _error(client.post("/ground", content=b"{not json", headers={"content-type": "application/json"}), 422)
    _error(client.post("/ground", content=b"x", headers={"content-type": "text/plain"}), 415)


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
