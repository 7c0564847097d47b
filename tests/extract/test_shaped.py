"""The shaped-benchmark generator: determinism, where the query's meaning sits, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from cache_schema import CacheReader
from extract.__main__ import main as extract_main
from extract.datasets import Annotation, AnnotationError
from extract.shaped import (
    FeatureMap,
    GeneratorParams,
    WordSpace,
    event_strength,
    generate,
    is_up_to_date,
    latent_clips,
    params_path,
    read_params,
)

QUERIES = {
    "train": [
        ("a man cooks pasta in a kitchen", [[20, 40]]),
        ("a dog runs on the beach", [[0, 10], [60, 70]]),
        ("a woman paints a red wall", [[100, 150]]),
        ("children play football in a park", [[40, 44]]),
    ],
    "val": [("a man eats pasta at a table", [[50, 80]]), ("a cat sleeps on a sofa", [[10, 30]])],
    "test": [("two people dance at a wedding", [[120, 150]]), ("a boy rides a bike", [[0, 20]])],
}


def write_qvhighlights(root: Path, queries: dict = QUERIES) -> Path:
    """A tiny QVHighlights annotation folder (150-s videos, 2-s clips, 3 annotators), one video per query."""
    root.mkdir(parents=True, exist_ok=True)
    qid = 0
    for split, rows in queries.items():
        name = "highlight_test_with_gt.jsonl" if split == "test" else f"highlight_{split}_release.jsonl"
        with (root / name).open("w") as f:
            for text, windows in rows:
                clip_ids = [c for s, e in windows for c in range(s // 2, e // 2)]
                scores = [[1 + (c % 4), 2, 4 if c % 2 else 3] for c in clip_ids]
                record = {
                    "qid": qid, "query": text, "duration": 150, "vid": f"v{qid:03d}_0.0_150.0",
                    "relevant_windows": windows, "relevant_clip_ids": clip_ids, "saliency_scores": scores,
                }  # fmt: skip
                f.write(json.dumps(record) + "\n")
                qid += 1
    return root


@pytest.fixture
def annotations(tmp_path: Path) -> Path:
    return write_qvhighlights(tmp_path / "qvh")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with CacheReader(path) as reader:
        for vid in reader.video_ids:
            out[vid] = reader.video_features(vid, "shaped_video")
        for qid in reader.query_ids:
            out[qid] = reader.query_tokens(qid, "shaped_text")
    return out


def test_same_seed_same_bytes_other_seed_other_features(annotations: Path, tmp_path: Path) -> None:
    a = generate("qvhighlights", tmp_path / "a.h5", annotations=annotations, log=lambda _: None)
    generate("qvhighlights", tmp_path / "b.h5", annotations=annotations, log=lambda _: None)
    generate(
        "qvhighlights",
        tmp_path / "c.h5",
        GeneratorParams(seed=1),
        annotations=annotations,
        log=lambda _: None,
    )
    first, second, other = (_arrays(tmp_path / n) for n in ("a.h5", "b.h5", "c.h5"))
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].tobytes() == second[key].tobytes(), key
    assert not np.array_equal(first["v000_0.0_150.0"], other["v000_0.0_150.0"])
    # Every annotated query is written, in its split, with its real windows and saliency.
    assert a.queries == {"train": 4, "val": 2, "test": 2}
    with CacheReader(tmp_path / "a.h5") as reader:
        assert reader.splits() == {"train": 4, "val": 2, "test": 2}
        item = reader.query("1", features=False)
        assert item.windows == [(0.0, 10.0), (60.0, 70.0)]
        assert item.saliency.shape == (75, 3) and item.saliency[0].tolist() == [1, 2, 3]
        assert reader.video_features("v000_0.0_150.0", "shaped_video").shape == (75, 512)
        assert reader.query_tokens("0", "shaped_text").shape == (7, 384)  # one token per word


def test_meaning_is_inside_the_windows_with_the_saliency_strength(annotations: Path) -> None:
    from extract.datasets import load_dataset

    rows = load_dataset("qvhighlights", annotations).by_split()["train"]
    params = GeneratorParams(noise=0.0, background=0.0, distractors=0, signal=2.0, filler=0.0)
    space = WordSpace(params)
    clips, x = latent_clips([rows[0]], rows, 2.0, space, params)  # window [20, 40] s
    m = space.meaning(rows[0].query, "t")
    strength = event_strength(rows[0], clips, 150.0)
    inside = (clips[:, 0] >= 20) & (clips[:, 1] <= 40)
    assert inside.sum() == 10
    assert np.all(strength[~inside] == 0)
    # 0.4 + 0.6 * mean annotator score / 4 on the clips inside
    mean_scores = rows[0].saliency.mean(axis=1)[10:20]
    np.testing.assert_allclose(strength[inside], 0.4 + 0.6 * mean_scores / 4)
    np.testing.assert_allclose(x, 2.0 * strength[:, None] * m[None, :], atol=1e-6)


def test_distractors_are_other_queries_with_their_own_positions(annotations: Path) -> None:
    from extract.datasets import load_dataset

    rows = load_dataset("qvhighlights", annotations).by_split()["train"]
    params = GeneratorParams(noise=0.0, background=0.0, distractors=3, filler=0.0)
    space = WordSpace(params)
    _, x = latent_clips([rows[3]], rows, 2.0, space, params)  # own window [40, 44] s
    # Outside its own window the video carries only meanings of the other three queries.
    others = np.stack([space.meaning(r.query, "t") for r in rows[:3]])  # (3, D)
    outside = np.ones(75, dtype=bool)
    outside[20:22] = False
    coeffs, *_ = np.linalg.lstsq(others.T, x[outside].T, rcond=None)
    assert np.abs(x[outside]).max() > 0.1  # the distractors are there...
    np.testing.assert_allclose(others.T @ coeffs, x[outside].T, atol=1e-5)  # ...and only they
    # Inside its window the video carries its own meaning at its saliency strength (mean scores
    # 2 and 8/3 there: 0.4 + 0.6 * mean / 4), give or take the distractors' small cosines with it.
    assert x[20:22] @ space.meaning(rows[3].query, "t") == pytest.approx([0.7, 0.8], abs=0.15)


def test_fillers_give_every_clip_the_same_meaning_energy(annotations: Path) -> None:
    """Inside or outside an event, a clip's meaning part has norm `signal`: the video alone shows nothing."""
    from extract.datasets import load_dataset

    rows = load_dataset("qvhighlights", annotations).by_split()["train"]
    params = GeneratorParams(noise=0.0, background=0.0, distractors=2, signal=2.0)
    space = WordSpace(params)
    clips, x = latent_clips([rows[0]], rows, 2.0, space, params)  # window [20, 40] s
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 2.0, rtol=1e-5)
    # The fillers are orthogonal to the events: the own meaning still shows at its strength
    # (give or take the distractors' small cosines with it), and only there.
    own = x @ space.meaning(rows[0].query, "t") / 2.0  # (T,)
    strength = event_strength(rows[0], clips, 150.0)
    np.testing.assert_allclose(own[10:20], strength[10:20], atol=0.15)
    # Without fillers the same video is dimmer outside its events than inside.
    _, bare = latent_clips([rows[0]], rows, 2.0, space, dataclasses.replace(params, filler=0.0))
    assert np.linalg.norm(bare[10:20], axis=1).min() > np.linalg.norm(bare, axis=1).min() + 0.5


def test_words_have_fixed_vectors_and_stop_words_leave_the_meaning() -> None:
    a, b = WordSpace(GeneratorParams()), WordSpace(GeneratorParams())
    assert np.array_equal(a.vector("pasta"), b.vector("pasta"))
    assert not np.array_equal(a.vector("pasta"), WordSpace(GeneratorParams(seed=1)).vector("pasta"))
    np.testing.assert_allclose(a.meaning("the man on a boat", "t"), a.meaning("man boat", "t"))
    tokens = a.tokens("Man, boat!", "test")
    np.testing.assert_allclose(tokens[0], a.vector("man") + 0.25 * a.vector("boat"))
    assert FeatureMap(GeneratorParams())(np.zeros((3, 384), np.float32)).shape == (3, 512)


def test_a_query_without_words_is_one_error_line_naming_its_line(
    annotations: Path, tmp_path: Path, capsys
) -> None:
    bad = dict(QUERIES)
    bad["val"] = [("!!!", [[0, 4]]), *QUERIES["val"]]
    root = write_qvhighlights(tmp_path / "bad", bad)
    with pytest.raises(AnnotationError, match=r"highlight_val_release.jsonl:1.*'!!!'"):
        generate("qvhighlights", tmp_path / "x.h5", annotations=root, log=lambda _: None)
    generate("qvhighlights", tmp_path / "y.h5", annotations=annotations, log=lambda _: None)
    assert read_params(tmp_path / "y.h5") is not None
    code = extract_main(["shaped", "--annotations", str(root), "--out", str(tmp_path / "y.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "highlight_val_release.jsonl:1" in err[0]
    # The failed run over a complete cache leaves nothing that reads as complete.
    assert read_params(tmp_path / "y.h5") is None


def test_missing_annotations_exit_2(tmp_path: Path, capsys) -> None:
    code = extract_main(["shaped", "--annotations", str(tmp_path / "none"), "--out", str(tmp_path / "y.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none" in err[0]


def test_reuse_only_a_complete_cache_of_the_same_arguments(annotations: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "c.h5"
    args = ["shaped", "--annotations", str(annotations), "--out", str(out), "--reuse"]
    assert extract_main(args) == 0
    assert read_params(out)["queries"] == {"train": 4, "val": 2, "test": 2}
    assert is_up_to_date(out, "qvhighlights", GeneratorParams(), None)
    assert not is_up_to_date(out, "qvhighlights", dataclasses.replace(GeneratorParams(), signal=3.0), None)
    assert not is_up_to_date(out, "qvhighlights", GeneratorParams(), 1)
    capsys.readouterr()
    assert extract_main(args) == 0
    assert "up to date" in capsys.readouterr().out
    params_path(out).unlink()  # as if the run had been killed after writing the cache
    assert not is_up_to_date(out, "qvhighlights", GeneratorParams(), None)
    assert extract_main(args) == 0
    assert "wrote 8 queries" in capsys.readouterr().out


def test_limit_keeps_the_first_videos_of_each_split(annotations: Path, tmp_path: Path) -> None:
    summary = generate("qvhighlights", tmp_path / "s.h5", annotations=annotations, limit_videos=2, log=print)
    assert summary.queries == {"train": 2, "val": 2, "test": 2}
    with CacheReader(tmp_path / "s.h5") as reader:
        assert sorted(reader.query_ids) == ["0", "1", "4", "5", "6", "7"]


def test_annotation_rows_of_another_duration_are_placed_in_normalised_time() -> None:
    row = Annotation(
        qid="q", vid="v", video=None, query="x", split="train", duration_sec=30.0,
        windows=((15.0, 30.0),), source="t:1",
    )  # fmt: skip
    clips = np.array([[0.0, 30.0], [30.0, 60.0]])
    np.testing.assert_allclose(event_strength(row, clips, 60.0), [0.0, 1.0])
