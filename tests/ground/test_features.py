"""Precomputed embeddings: `Grounder.ground_features`, `ground-video --features`, `POST /ground/features`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from test_predict import World, grounding_world, query_text

from ground.cli import main as ground_main
from ground.predict import FeatureDimError, Grounder, GroundingInputError
from ground.serve.app import create_app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    torch.set_num_threads(1)
    return grounding_world(tmp_path_factory)


@pytest.fixture(scope="module")
def grounder(world: World) -> Grounder:
    return Grounder.from_checkpoint(world.ckpt)


@pytest.fixture(scope="module")
def amber(grounder: Grounder, world: World) -> tuple[np.ndarray, np.ndarray]:
    """The features and clip timestamps the checkpoint's encoders give amber.mp4."""
    features, timestamps_sec, _ = grounder._feature_extractor().encode_video(world.video("amber"))
    return features["tiny_clip"], timestamps_sec  # (T, D) float16, (T, 2)


@pytest.fixture(scope="module")
def client(grounder: Grounder, world: World) -> TestClient:
    return TestClient(create_app(grounder, world.root, max_upload_mb=1))


QUERIES = [query_text("red"), query_text("blue")]


def _b64(array: np.ndarray, dtype: str) -> dict:
    a = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def _summary(results: list[dict]) -> list[tuple]:
    return [
        (r["query"], r["presence"], [(w["start_sec"], w["end_sec"], w["score"]) for w in r["windows"]])
        for r in results
    ]


def test_features_give_the_answer_of_the_video(grounder: Grounder, world: World, amber) -> None:
    features, timestamps_sec = amber
    from_video = grounder.ground(world.video("amber"), QUERIES, top_k=3, coarse_to_fine=False)
    from_features = grounder.ground_features(features, QUERIES, timestamps_sec=timestamps_sec, top_k=3)
    # 1-s clips of an 8-s video: clip_sec describes the same clips.
    by_clip_sec = grounder.ground_features(features, QUERIES, clip_sec=1.0, top_k=3)
    for video, feats, clips in zip(from_video, from_features, by_clip_sec, strict=True):
        assert feats.windows == video.windows and feats.presence == video.presence
        assert clips.windows == video.windows and clips.saliency == video.saliency


def test_precomputed_query_features_equal_sentences(grounder: Grounder, amber) -> None:
    features, _ = amber
    text = grounder.encode_queries(QUERIES)
    assert text[0][0].shape[1] == grounder.text_spec.dim
    sentences = grounder.ground_features(features, QUERIES, clip_sec=1.0)
    precomputed = grounder.ground_features(features, text_features=text, labels=["r", "b"], clip_sec=1.0)
    assert [r.query for r in precomputed] == ["r", "b"]
    assert [r.windows for r in precomputed] == [r.windows for r in sentences]


def test_bad_features_name_the_problem(grounder: Grounder, amber) -> None:
    features, timestamps_sec = amber
    dim = grounder.video_specs[0].dim
    with pytest.raises(FeatureDimError, match=f"dim {dim + 3}.*expects dim {dim}"):
        grounder.ground_features(np.zeros((4, dim + 3), np.float32), QUERIES, clip_sec=1.0)
    text_dim = grounder.text_spec.dim
    with pytest.raises(FeatureDimError, match=f"tokens have dim 5.*expects dim {text_dim}"):
        grounder.ground_features(
            features, text_features=[(np.zeros((3, 5)), np.zeros(text_dim))], clip_sec=1.0
        )
    nan = features.astype(np.float32)
    nan[2, 0] = np.nan
    with pytest.raises(GroundingInputError, match="first bad clip 2"):
        grounder.ground_features(nan, QUERIES, clip_sec=1.0)
    overlapping = timestamps_sec.copy()
    overlapping[3, 0] = 1.5
    with pytest.raises(GroundingInputError, match="clip 3"):
        grounder.ground_features(features, QUERIES, timestamps_sec=overlapping)
    with pytest.raises(GroundingInputError, match="either clip timestamps_sec or a clip_sec"):
        grounder.ground_features(features, QUERIES)
    with pytest.raises(GroundingInputError, match="either queries or text_features"):
        grounder.ground_features(features, clip_sec=1.0)
    with pytest.raises(GroundingInputError, match="ends before"):
        grounder.ground_features(features, QUERIES, clip_sec=1.0, duration_sec=2.0)


@pytest.mark.parametrize("encoding", ["float16", "float32", "numbers"])
def test_http_features_equal_the_cli(
    client: TestClient, world: World, amber, tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str
) -> None:
    features, timestamps_sec = amber
    path = tmp_path / "amber.npy"
    np.save(path, features)
    ts_path = tmp_path / "ts.npy"
    np.save(ts_path, timestamps_sec)
    argv = ["ground-video", "--ckpt", str(world.ckpt), "--features", str(path), "--timestamps", str(ts_path)]
    assert ground_main([*argv, *sum((["--query", q] for q in QUERIES), []), "--top-k", "3", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    video = features.tolist() if encoding == "numbers" else _b64(features, encoding)
    body = {
        "video_features": video,
        "timestamps_sec": timestamps_sec.tolist(),
        "queries": QUERIES,
        "top_k": 3,
    }
    response = client.post("/ground/features", json=body)
    assert response.status_code == 200, response.text
    assert _summary(response.json()["results"]) == _summary(cli)
    assert response.json()["duration_sec"] == pytest.approx(timestamps_sec[-1, 1])


def test_http_query_features(client: TestClient, grounder: Grounder, amber) -> None:
    features, _ = amber
    [(tokens, pooled)] = grounder.encode_queries([QUERIES[0]])
    body = {
        "video_features": _b64(features, "float16"),
        "clip_sec": 1.0,
        "query_features": [{"tokens": _b64(tokens, "float32"), "pooled": pooled.tolist(), "label": "red"}],
    }
    response = client.post("/ground/features", json=body)
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    [expected] = grounder.ground_features(features, [QUERIES[0]], clip_sec=1.0)
    assert result["query"] == "red" and result["presence"] == pytest.approx(expected.presence, abs=1e-6)


def test_http_feature_errors(client: TestClient, grounder: Grounder, amber) -> None:
    features, _ = amber
    dim = grounder.video_specs[0].dim
    wrong = client.post(
        "/ground/features",
        json={"video_features": [[0.0] * (dim + 1)] * 3, "clip_sec": 1.0, "queries": ["x"]},
    )
    assert wrong.status_code == 422 and f"dim {dim + 1}" in wrong.json()["error"]
    assert f"expects dim {dim}" in wrong.json()["error"]
    short = _b64(features, "float16")
    short["shape"] = [len(features) + 1, dim]
    response = client.post(
        "/ground/features", json={"video_features": short, "clip_sec": 1.0, "queries": ["x"]}
    )
    assert response.status_code == 422 and "video_features" in response.json()["error"]
    assert "bytes of data" in response.json()["error"]
    ragged = client.post(
        "/ground/features", json={"video_features": [[0.0], [0.0, 1.0]], "clip_sec": 1.0, "queries": ["x"]}
    )
    assert ragged.status_code == 422 and "rows of different lengths" in ragged.json()["error"]
    strict = client.post(
        "/ground/features", json={"video_features": [["1"]], "clip_sec": 1.0, "queries": ["x"]}
    )
    assert strict.status_code == 422
    neither = client.post("/ground/features", json={"video_features": features.tolist(), "queries": ["x"]})
    assert neither.status_code == 400 and "clip_sec" in neither.json()["error"]
    form = client.post("/ground/features", data={"queries": "x"}, files={"file": ("a.npy", b"x")})
    assert form.status_code == 415
    # Capped like uploads (1 MiB here), without reading past the cap.
    big = {
        "video_features": _b64(np.zeros(((1 << 20) // (3 * dim), dim), np.float32), "float32"),  # 1.3 MiB
        "clip_sec": 1.0,
        "queries": ["x"],
    }
    assert client.post("/ground/features", json=big).status_code == 413


def test_cli_feature_errors(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "wrong.npy"
    np.save(path, np.zeros((4, 7), np.float32))
    base = ["ground-video", "--ckpt", str(world.ckpt), "--query", "x"]
    assert ground_main([*base, "--features", str(path), "--clip-sec", "1"]) == 2
    err = capsys.readouterr().err
    assert "dim 7" in err and "expects dim" in err and "Traceback" not in err
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    assert ground_main([*base, "--features", str(junk), "--clip-sec", "1"]) == 2
    assert "junk.npy" in capsys.readouterr().err
