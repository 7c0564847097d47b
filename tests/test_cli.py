"""The three command lines: every command listed in `--help`, and bad input as one line with exit 2.

Each bad input goes through the real `main(argv)` of its CLI (the function `python -m PACKAGE`
runs), so the error boundary itself is tested, not a library call: exit status 2, exactly one
line on stderr, the item named, no traceback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

import cache_schema.__main__ as cache_cli
import extract.__main__ as extract_cli
import ground.cli as ground_cli
from cache_schema.backends import Store
from cache_schema.cli import one_line, print_error
from cache_schema.errors import GroundcacheError
from cache_schema.fake import write_fake_cache
from ground.data import GroundingDataModule
from ground.errors import EncoderMismatchError
from ground.module import GroundingModule

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIS = {
    "python -m cache_schema": (cache_cli.main, cache_cli.COMMANDS),
    "python -m extract": (extract_cli.main, extract_cli.COMMANDS),
    "python -m ground": (ground_cli.main, ground_cli.COMMANDS),
}
TINY_SPAN = ["--model.hparams.hidden_dim", "32", "--model.hparams.num_layers", "1"]
TINY_SPAN += ["--model.hparams.num_heads", "2"]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # tiny models: threads only add contention


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of the command just run, checked to be exactly one `error:` line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


# -- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prog", CLIS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_command_one_line_each(prog: str, flag: str, capsys) -> None:
    main, commands = CLIS[prog]
    assert main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} COMMAND")
    lines = out.splitlines()
    for name in commands:
        rows = [line for line in lines if line.split()[:1] == [name] and line.startswith("  ")]
        assert len(rows) == 1, f"{name!r} is not listed once in:\n{out}"
        assert len(rows[0].split()) > 1, f"{name!r} has no summary: {rows[0]!r}"
    assert "__main__" not in out


@pytest.mark.parametrize("prog", CLIS)
def test_no_arguments_prints_the_command_list_and_exits_2(prog: str, capsys) -> None:
    main, commands = CLIS[prog]
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in commands)


@pytest.mark.parametrize("prog", CLIS)
def test_unknown_command_is_one_line_listing_the_commands(prog: str, capsys) -> None:
    main, commands = CLIS[prog]
    assert main(["no-such-command"]) == 2
    line = one_error_line(capsys)
    assert "'no-such-command'" in line and all(name in line for name in commands)


def test_python_m_cache_schema_help_names_itself() -> None:
    # The real `python -m` entry (the in-process tests above cannot see the program name argv[0]).
    done = subprocess.run(
        [sys.executable, "-m", "cache_schema", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m cache_schema COMMAND")
    assert "  validate  " in done.stdout and "  inspect  " in done.stdout


def test_lightning_commands_keep_their_own_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        ground_cli.main(["fit", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m ground [options] fit" in out and "--trainer.max_epochs" in out


# -- the boundary itself ---------------------------------------------------------------------------


def test_error_line_escapes_markup_and_keeps_long_messages_on_one_line(capsys) -> None:
    message = "trained on video encoders [tiny_clip(dim=32)] and text encoder [bold]x[/bold] " + "y" * 300
    print_error(GroundcacheError(message + "\nsecond line"))
    line = one_error_line(capsys)
    assert line == f"error: {message}; second line"


def test_key_error_subclass_prints_without_quotes() -> None:
    class Missing(GroundcacheError, KeyError):
        pass

    assert one_line(Missing("ckpt.pt: no encoder record")) == "ckpt.pt: no encoder record"


def test_bugs_keep_their_traceback() -> None:
    def buggy(argv: list[str]) -> int:
        raise ZeroDivisionError("a bug")

    from cache_schema.cli import run_commands

    with pytest.raises(ZeroDivisionError):
        run_commands("prog", "test", {"go": buggy}, ["go"])


# -- extract ---------------------------------------------------------------------------------------


def _extract_config(tmp_path: Path, annotations: Path, adapter: str = "custom") -> Path:
    config = {
        "dataset": "bad_input",
        "adapter": adapter,
        "annotations": str(annotations),
        "video_root": str(tmp_path),
        "output": str(tmp_path / "cache.h5"),
        "video_encoders": [{"name": "tiny_clip", "weights": "none"}],
        "text_encoders": [{"name": "tiny_clip", "weights": "none"}],
        "num_workers": 0,
    }
    path = tmp_path / "extract.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def test_extract_non_utf8_annotations_name_the_file_and_line(tmp_path: Path, capsys) -> None:
    annotations = tmp_path / "annotations.jsonl"
    good = {"qid": "q0", "video": "a.mp4", "query": "a person waves", "windows": [[0, 1]], "split": "train"}
    annotations.write_bytes(json.dumps(good).encode() + b'\n{"qid": "q1", "query": "caf\xe9 \xff"}\n')
    assert extract_cli.main(["--config", str(_extract_config(tmp_path, annotations))]) == 2
    line = one_error_line(capsys)
    # The file, and its line 2 (whatever the wording: "line 2", "annotations.jsonl:2").
    assert "annotations.jsonl" in line
    assert re.search(r"\b2\b", line.replace(str(tmp_path), "")), line


def test_extract_unknown_dataset_names_the_available_ones(tmp_path: Path, capsys) -> None:
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("", encoding="utf-8")
    config = _extract_config(tmp_path, annotations, adapter="no_such_dataset")
    assert extract_cli.main(["--config", str(config)]) == 2
    line = one_error_line(capsys)
    assert "no_such_dataset" in line and "qvhighlights" in line


def test_extract_merge_without_shards_is_one_line(tmp_path: Path, capsys) -> None:
    assert extract_cli.main(["merge", str(tmp_path / "cache.h5")]) == 2
    assert "no shard stores" in one_error_line(capsys)


# -- caches: another schema major version, truncated -----------------------------------------------


def _other_major(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    store = Store(dst, "r+")
    store.set_attr("schema_version", "3.0.0")
    store.close()
    return dst


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_cache_schema_inspect_truncated_cache_is_one_line(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache.h5"
    write_fake_cache(cache, n_videos=3)
    half = _truncated(cache, tmp_path / "half.h5")
    assert cache_cli.main(["inspect", str(half)]) == 2
    line = one_error_line(capsys)
    assert str(half) in line and "cannot be opened as an HDF5 store" in line
    assert cache_cli.main(["validate", str(half)]) == 1  # validate reports it as a violation
    assert str(half) in capsys.readouterr().out


def test_cache_schema_inspect_prints_user_text_verbatim(tmp_path: Path, capsys) -> None:
    cache = tmp_path / ("long" * 20) / "[bold]cache.h5"  # longer than a terminal line: not cut
    cache.parent.mkdir()
    write_fake_cache(cache, n_videos=2, dataset="qvh [red]v2[/red]")
    assert cache_cli.main(["inspect", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"{cache} (hdf5" in out and "qvh [red]v2[/red]" in out


# -- ground: test / predict / ground-video / report ------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache, checkpoint) of a span network trained one step on a fake cache (video 32, text 16)."""
    root = tmp_path_factory.mktemp("cli_errors")
    cache = root / "cache.h5"
    write_fake_cache(cache, n_videos=6, queries_per_video=2)
    L.seed_everything(0, verbose=False)
    data = GroundingDataModule(str(cache), batch_size=4)
    module = GroundingModule(
        name="span",
        video_dim=data.video_dim,
        text_dim=data.text_dim,
        hparams={"hidden_dim": 32, "num_layers": 1, "num_heads": 2},
    )
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(root / "span.ckpt")
    return cache, root / "span.ckpt"


def _lightning_args(command: str, cache: Path, tmp_path: Path, *extra: str) -> list[str]:
    args = [command, "--data.cache", str(cache), "--model", "ground/configs/model/span.yaml", *TINY_SPAN]
    args += ["--run_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false", *extra]
    if command == "predict":
        args += ["--out", str(tmp_path / "pred.jsonl")]
    return args


BAD_CACHES: dict[str, Callable[[Path, Path], Path]] = {"other_major": _other_major, "truncated": _truncated}


@pytest.mark.parametrize("command", ["test", "predict"])
@pytest.mark.parametrize("kind", BAD_CACHES)
def test_ground_lightning_commands_on_a_bad_cache(
    trained: tuple[Path, Path], tmp_path: Path, capsys, command: str, kind: str
) -> None:
    cache, ckpt = trained
    bad = BAD_CACHES[kind](cache, tmp_path / f"{kind}.h5")
    argv = _lightning_args(command, bad, tmp_path, "--ckpt_path", str(ckpt))
    assert ground_cli.main(argv) == 2
    line = one_error_line(capsys)
    assert str(bad) in line
    if kind == "other_major":
        assert "3.0.0" in line and "major version 3 is not one of 1, 2" in line
    else:
        assert "cannot be opened as an HDF5 store" in line
    assert not (tmp_path / "pred.jsonl").exists()


def test_ground_video_on_a_truncated_cache(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    cache, ckpt = trained
    half = _truncated(cache, tmp_path / "half.h5")
    argv = ["ground-video", "--ckpt", str(ckpt), "--cache", str(half), "--video", "vid00000", "--query", "x"]
    assert ground_cli.main(argv) == 2
    line = one_error_line(capsys)
    assert str(half) in line and "cannot be opened as an HDF5 store" in line


def _expect_both_encoder_sets(line: str, ckpt: Path, other: Path) -> None:
    # Both sets with their dims, the brackets intact (rich markup would have eaten "[...]").
    text = "and text encoder [fake_text(dim=16"
    trained = f"video encoders [fake_video0(dim=32, weights=none, stride_sec=1.0)] {text}"
    provided = f"video encoders [fake_video0(dim=8, weights=none, stride_sec=1.0)] {text}"
    assert str(ckpt) in line and str(other) in line
    assert trained in line and provided in line
    assert line.index(trained) < line.index(provided)


@pytest.mark.parametrize("command", ["test", "predict"])
def test_ground_lightning_commands_with_other_encoder_dims(
    trained: tuple[Path, Path], tmp_path: Path, capsys, command: str
) -> None:
    cache, ckpt = trained
    other = tmp_path / "other.h5"
    write_fake_cache(other, n_videos=3, queries_per_video=1, video_dims=(8,), text_dim=16)
    argv = _lightning_args(command, other, tmp_path, "--ckpt_path", str(ckpt), "--trainer.logger", "false")
    assert ground_cli.main(argv) == 2
    _expect_both_encoder_sets(one_error_line(capsys), ckpt, other)
    assert not (tmp_path / "pred.jsonl").exists()


def test_ground_report_with_other_encoder_dims(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    cache, ckpt = trained
    other = tmp_path / "other.h5"
    write_fake_cache(other, n_videos=3, queries_per_video=1, video_dims=(8,), text_dim=16)
    argv = ["report", "--ckpt", str(ckpt), "--cache", str(other), "--out", str(tmp_path / "report")]
    assert ground_cli.main(argv) == 2
    _expect_both_encoder_sets(one_error_line(capsys), ckpt, other)
    assert not (tmp_path / "report" / "index.html").exists()


def test_encoder_mismatch_is_a_value_error_for_library_callers() -> None:
    assert issubclass(EncoderMismatchError, ValueError) and issubclass(EncoderMismatchError, GroundcacheError)
