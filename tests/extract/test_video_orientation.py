"""Videos with a display matrix (phones' rotated recordings) come out as players show them.

Fixtures are made in code: a lossless non-square mp4 written with PyAV, then its track header's
(``tkhd``) transformation matrix overwritten in place, which is where phones store the rotation
and what FFmpeg's mp4 demuxer turns into the display matrix. Each picture has four coloured
quadrants and a gradient, so every pixel's place identifies the transform exactly.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pipeline import ENCODER, write_config
from test_video import HAS_DECORD

from cache_schema.spec import Orientation
from cache_schema.store import CacheReader
from cache_schema.validate import validate
from extract import video as video_mod
from extract.__main__ import main
from extract.pipeline import failures_path
from extract.video import (
    VideoDecodeError,
    autorotate_filters,
    decode_frames_at,
    orientation_of_matrix,
    probe_video,
    sample_video,
    write_video,
)

ONE = 1 << 16  # 1.0 in the matrix's 16.16 fixed point
W = 1 << 30  # 1.0 in 2.30 fixed point (the third column)
HEIGHT, WIDTH = 16, 32  # decord 0.6.0 misreads rgb24 rows whose width is not a multiple of 32

# name -> (tkhd matrix a b u c d v x y w, the picture as players show it, ffmpeg's filters).
# The expected pictures are written with plain numpy here, not with the code under test.
CASES = {
    "none": ([ONE, 0, 0, 0, ONE, 0, 0, 0, W], lambda a: a, ()),
    "rot90": ([0, ONE, 0, -ONE, 0, 0, 0, 0, W], lambda a: np.rot90(a, -1), ("transpose=clock",)),
    "rot180": ([-ONE, 0, 0, 0, -ONE, 0, 0, 0, W], lambda a: a[::-1, ::-1], ("hflip", "vflip")),
    "rot270": ([0, -ONE, 0, ONE, 0, 0, 0, 0, W], lambda a: np.rot90(a, 1), ("transpose=cclock",)),
    "hflip": ([-ONE, 0, 0, 0, ONE, 0, 0, 0, W], lambda a: a[:, ::-1], ("hflip",)),
    "vflip": ([ONE, 0, 0, 0, -ONE, 0, 0, 0, W], lambda a: a[::-1], ("vflip",)),
    "transpose": (
        [0, ONE, 0, ONE, 0, 0, 0, 0, W], lambda a: a.transpose(1, 0, 2), ("transpose=cclock_flip",)
    ),
    "antitranspose": (
        [0, -ONE, 0, -ONE, 0, 0, 0, 0, W],
        lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        ("transpose=clock_flip",),
    ),
}
ORIENTATIONS = {
    "none": Orientation(0, False),
    "rot90": Orientation(90, False),
    "rot180": Orientation(180, False),
    "rot270": Orientation(270, False),
    "hflip": Orientation(0, True),
    "vflip": Orientation(180, True),
    "transpose": Orientation(270, True),
    "antitranspose": Orientation(90, True),
}


def coded_pictures(n: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(n, H, W, 3): red/green/blue/white quadrants, a gradient in them, the frame index in blue."""
    y, x = np.mgrid[0:height, 0:width]
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = y < height // 2, x < width // 2
    picture[top & left] = (200, 0, 0)
    picture[top & ~left] = (0, 200, 0)
    picture[~top & left] = (0, 0, 200)
    picture[~top & ~left] = (200, 200, 200)
    picture[..., 1] += (3 * x + 5 * y).astype(np.uint8) % 50  # no two pixels of a quadrant alike
    frames = np.repeat(picture[None], n, axis=0)
    frames[..., 2] += np.arange(n, dtype=np.uint8)[:, None, None]
    return frames


def _boxes(buf: bytes | bytearray, start: int, end: int):
    """(type, body start, end) of each ISO-BMFF box between start and end."""
    while start < end:
        size, kind = struct.unpack(">I4s", buf[start:start + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", buf[start + 8:start + 16])[0], 16
        elif size == 0:
            size = end - start
        yield kind, start + header, start + size
        start += size


def set_display_matrix(path: Path, matrix: list[int]) -> None:
    """Overwrite the video track header's 3x3 matrix in place (big-endian, as in the file)."""
    buf = bytearray(path.read_bytes())
    written = 0
    for kind, body, end in _boxes(buf, 0, len(buf)):
        if kind != b"moov":
            continue
        for trak, trak_body, trak_end in _boxes(buf, body, end):
            if trak != b"trak":
                continue
            for box, tkhd, _ in _boxes(buf, trak_body, trak_end):
                if box == b"tkhd":
                    # version+flags, times and track id (20 or 32 bytes), reserved 8, layer...volume 8
                    at = tkhd + 4 + (32 if buf[tkhd] == 1 else 20) + 8 + 8
                    buf[at:at + 36] = struct.pack(">9i", *matrix)
                    written += 1
    assert written == 1, f"{path}: expected one track header, found {written}"
    path.write_bytes(buf)


def write_oriented(path: Path, matrix: list[int], frames: np.ndarray, fps: int = 4) -> Path:
    write_video(path, frames, Fraction(fps), lossless=True)
    set_display_matrix(path, matrix)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("oriented")
    frames = coded_pictures(8)
    return {name: write_oriented(root / f"{name}.mp4", case[0], frames) for name, case in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_filters_are_ffmpegs(name):
    matrix, _, filters = CASES[name]
    assert autorotate_filters(matrix) == filters
    assert orientation_of_matrix(tuple(matrix)) == ORIENTATIONS[name]


@pytest.mark.parametrize("backend", ["pyav", "auto"])
@pytest.mark.parametrize("name", list(CASES))
def test_frames_come_out_as_shown(videos, name, backend):
    _, shown, _ = CASES[name]
    coded = coded_pictures(8)
    expected = np.stack([shown(frame) for frame in coded])  # (N, H', W', 3)
    info = probe_video(videos[name])
    assert info.orientation == ORIENTATIONS[name]
    assert (info.height, info.width) == expected.shape[1:3]

    sampled = sample_video(videos[name], fps=4.0, backend=backend)
    np.testing.assert_array_equal(sampled.frames, expected[sampled.frame_indices])
    at = decode_frames_at(videos[name], [0.0, 1.75], backend=backend)  # (2, H', W', 3)
    np.testing.assert_array_equal(at, expected[[0, 7]])
    if name != "none":
        assert sampled.backend == "pyav"
        if backend == "auto" and HAS_DECORD:
            assert "display matrix" in sampled.fallback_reason


def test_quarter_turn_corners(videos):
    """Spelled out for the phone case: a 90 degree clockwise turn puts the bottom-left on top."""
    frame = sample_video(videos["rot90"], fps=1.0, backend="pyav").frames[0]  # (W, H, 3) of the coded
    assert frame.shape == (WIDTH, HEIGHT, 3)
    red, blue = frame[0, -1], frame[0, 0]
    assert red[0] == 200 and red[2] < 10 and blue[2] >= 200 and blue[0] == 0
    assert frame[-1, 0, 0] == 200 and frame[-1, 0, 2] >= 200  # white
    assert frame[-1, -1, 0] == 0 and frame[-1, -1, 2] < 10  # green


def test_resize_happens_after_the_turn(videos):
    sampled = sample_video(videos["rot90"], fps=1.0, size=8, backend="pyav")
    assert sampled.frames.shape[1:] == (16, 8, 3)  # shown 32 x 16: the shorter side is the width
    sampled = sample_video(videos["rot90"], fps=1.0, size=(6, 4), backend="pyav")
    assert sampled.frames.shape[1:] == (6, 4, 3)


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
@pytest.mark.parametrize("name", [n for n in CASES if n != "none"])
def test_decord_is_refused_in_one_line(videos, name):
    with pytest.raises(VideoDecodeError) as caught:
        sample_video(videos[name], backend="decord")
    message = str(caught.value)
    assert message.startswith(str(videos[name])) and "\n" not in message
    assert "display matrix" in message and "'pyav'" in message


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
def test_decord_still_decodes_upright_videos(videos):
    sampled = sample_video(videos["none"], fps=4.0, backend="auto")
    assert sampled.backend == "decord" and sampled.fallback_reason is None
    pyav = sample_video(videos["none"], fps=4.0, backend="pyav")
    np.testing.assert_array_equal(sampled.frames, pyav.frames)


def test_a_turn_that_is_not_a_quarter_is_refused(tmp_path):
    c = round(ONE * np.cos(np.pi / 4))
    path = write_oriented(tmp_path / "tilted.mp4", [c, c, 0, -c, c, 0, 0, 0, W], coded_pictures(2))
    with pytest.raises(VideoDecodeError, match=r"tilted\.mp4: .*45 degrees, not a quarter turn"):
        probe_video(path)


FFMPEG = shutil.which("ffmpeg")


@pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg command is not installed (apt-get install ffmpeg)")
@pytest.mark.parametrize("name", list(CASES))
def test_same_frames_as_the_ffmpeg_command(videos, name):
    """``ffmpeg -i in.mp4 out.png`` (autorotate on) shows exactly what we decode."""
    out = videos[name].with_suffix(".png")
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-i", str(videos[name]), "-frames:v", "1", str(out)], check=True
    )
    theirs = np.asarray(Image.open(out).convert("RGB"))
    ours = decode_frames_at(videos[name], [0.0], backend="pyav")[0]
    np.testing.assert_array_equal(ours, theirs)


def write_phone_dataset(root: Path) -> Path:
    """``upright.mp4`` and ``phone.mp4`` (the same pictures stored sideways + a 90 degree matrix)."""
    shown = coded_pictures(12, height=64, width=32)  # portrait, as the phone's user saw it
    write_video(root / "videos" / "upright.mp4", shown, Fraction(4), lossless=True)
    sideways = np.stack([np.rot90(frame, 1) for frame in shown])  # what the sensor stored
    write_oriented(root / "videos" / "phone.mp4", CASES["rot90"][0], sideways)
    rows = [
        {"qid": f"{vid}_q", "video": f"videos/{vid}.mp4", "query": "a person walks",
         "windows": [[0.5, 2.0]], "split": "train", "duration": 3.0}
        for vid in ("upright", "phone")
    ]
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def test_the_cache_notes_the_orientation_and_features_match_upright(tmp_path):
    """A phone video gives the upright video's features, and its record says it was turned."""
    root = write_phone_dataset(tmp_path / "data")
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "config.yaml", root, out, num_workers=0)
    assert main(["--config", str(config)]) == 0

    assert validate(out) == []
    with CacheReader(out) as reader:
        assert reader.video_meta("upright").orientation == Orientation(0, False)
        assert reader.video_meta("phone").orientation == Orientation(90, False)
        assert reader.video("phone").orientation == Orientation(90, False)
        np.testing.assert_array_equal(
            reader.video_features("phone", ENCODER), reader.video_features("upright", ENCODER)
        )


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
def test_an_explicit_decord_run_fails_the_phone_video_in_one_line(tmp_path, capsys):
    root = write_phone_dataset(tmp_path / "data")
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "config.yaml", root, out, num_workers=0, decode_backend="decord")
    assert main(["--config", str(config)]) != 0

    failures = [json.loads(line) for line in failures_path(out).read_text().splitlines()]
    assert [f["vid"] for f in failures] == ["phone"]
    reason = failures[0]["reason"]
    assert reason.startswith(str(root / "videos" / "phone.mp4")) and "\n" not in reason
    assert "display matrix" in reason and "'pyav'" in reason
    assert "Traceback" not in capsys.readouterr().err
    with CacheReader(out) as reader:
        assert reader.video_ids == ["upright"]

def test_a_matrix_that_changes_mid_stream_is_refused(videos, monkeypatch):
    """The output size is fixed from the first frame; a later frame asking for a turn must fail.

    (H.264 can carry the orientation per frame in SEI messages; no such file is built here, so
    the decoder's answer for frames 4 on is replaced.)
    """
    original = video_mod._frame_orientation
    info = probe_video(videos["none"])

    def turning(path, frame):
        return Orientation(90, False) if frame.pts >= info.pts[4] else original(path, frame)

    monkeypatch.setattr(video_mod, "_frame_orientation", turning)
    with pytest.raises(VideoDecodeError, match=r"none\.mp4: frame 4 asks to be turned 90 deg clockwise, "
                       r"the first frame to be shown as decoded"):
        sample_video(videos["none"], fps=4.0, backend="pyav")
