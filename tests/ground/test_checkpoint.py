"""`ground.module.load_checkpoint` rebuilds the checkpoints of every writer, and refuses others by name.

The writers: `python -m ground fit` (LightningCLI, which adds `_instantiator` to the saved
hyperparameters), `ground demo` (`ground.demo.train_span`) and `ground zoo`
(`ground.zoo.run_model`). tests/test_journey.py runs the real commands on real files; these
tests feed the loader each writer's output in-process, on a fake cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cache_schema import CacheReader
from cache_schema.fake import write_fake_cache
from ground.cli import main as ground_main
from ground.data import GroundingDataModule
from ground.demo import train_span
from ground.module import CheckpointError, GroundingModule, load_checkpoint
from ground.predict import Grounder
from ground.zoo import run_model

REPO = Path(__file__).resolve().parents[2]
TINY_SPAN = [
    "--model.hparams.hidden_dim",
    "32",
    "--model.hparams.num_layers",
    "1",
    "--model.hparams.num_heads",
    "2",
]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # tiny models: threads only add contention


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("writers") / "cache.h5"
    write_fake_cache(path, n_videos=9, queries_per_video=2, duration_range_sec=(6.0, 20.0))
    return path


def _fit(cache: Path, root: Path) -> Path:
    """`python -m ground fit` in-process: the LightningCLI writer."""
    argv = [
        "fit",
        "--data.cache",
        str(cache),
        "--data.batch_size",
        "8",
        "--model",
        str(REPO / "ground" / "configs" / "model" / "span.yaml"),
        *TINY_SPAN,
        "--run_dir",
        str(root),
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    assert ground_main(argv) == 0
    [best] = root.rglob("best-*.ckpt")
    return best


def _demo(cache: Path, root: Path) -> Path:
    _, best = train_span(GroundingDataModule(str(cache), batch_size=8), root, epochs=2)
    return best


def _zoo(cache: Path, root: Path) -> Path:
    run_model("span", GroundingDataModule(str(cache), batch_size=8), epochs=2, run_dir=root, lr=1e-3)
    return root / "span" / "seed0" / "best.ckpt"


WRITERS: dict[str, Callable[[Path, Path], Path]] = {"fit": _fit, "demo": _demo, "zoo": _zoo}


@pytest.fixture(scope="module")
def checkpoints(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: write(cache, tmp_path_factory.mktemp(name)) for name, write in WRITERS.items()}


def test_fit_checkpoint_carries_lightning_cli_keys(checkpoints: dict[str, Path]) -> None:
    # The keys that broke ground-video; if LightningCLI stops writing them this test says so.
    hparams = torch.load(checkpoints["fit"], weights_only=True)["hyper_parameters"]
    assert hparams["_instantiator"] == "lightning.pytorch.cli.instantiate_module"


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_loads(writer: str, checkpoints: dict[str, Path], cache: Path) -> None:
    path = checkpoints[writer]
    checkpoint = torch.load(path, weights_only=True)
    module = load_checkpoint(path)
    assert isinstance(module, GroundingModule) and not module.training
    assert module.hparams.name == "span"
    assert module.hparams.video_dim == 32 and module.hparams.text_dim == 16
    state = module.state_dict()
    assert state.keys() == checkpoint["state_dict"].keys()
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert module.encoder_record == checkpoint["groundcache"]["encoders"]
    assert module.encoder_record["video_encoders"][0]["name"] == "fake_video0"

    # The Python API on top of the loader answers a cached video inside its duration.
    grounder = Grounder.from_checkpoint(path, cache=cache)
    with CacheReader(cache) as reader:
        item = next(iter(reader.queries()))
        duration_sec = reader.video_meta(item.vid).duration_sec
    [result] = grounder.ground(item.vid, [item.text], top_k=3)
    assert 1 <= len(result.windows) <= 3
    for start, end, _ in result.windows:
        assert 0.0 <= start <= end <= duration_sec + 1e-6


def _rewritten(source: Path, target: Path, change: Callable[[dict], None]) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return target


def test_unknown_hyperparameter_is_named_not_dropped(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = _rewritten(
        checkpoints["fit"],
        tmp_path / "extra.ckpt",
        lambda c: c["hyper_parameters"].update(temperature=0.5),
    )
    with pytest.raises(CheckpointError, match=r"extra\.ckpt: hyperparameters \['temperature'\] are not"):
        load_checkpoint(path)


def test_checkpoint_of_another_class_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = _rewritten(
        checkpoints["fit"],
        tmp_path / "other.ckpt",
        lambda c: c["hyper_parameters"].update(_class_path="somewhere.OtherModule"),
    )
    with pytest.raises(CheckpointError, match=r"other\.ckpt: saved by somewhere\.OtherModule, not by ground"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_their_hyperparameters(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = _rewritten(
        checkpoints["demo"],
        tmp_path / "resized.ckpt",
        lambda c: c["hyper_parameters"]["hparams"].update(hidden_dim=64),
    )
    with pytest.raises(CheckpointError, match=r"resized\.ckpt: weights do not fit"):
        load_checkpoint(path)


def test_a_checkpoint_older_than_a_default_names_the_unrecorded_arguments(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """As a checkpoint from before a network argument existed: its hyperparameters do not record
    it, today's default builds another network, and the message says which arguments to check."""

    def older(checkpoint: dict) -> None:
        hparams = checkpoint["hyper_parameters"]["hparams"]
        hparams.pop("saliency_to_fusion", None)  # default True: adds saliency_embed's weights
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("net.saliency_embed.")
        }

    path = _rewritten(checkpoints["demo"], tmp_path / "older.ckpt", older)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "older.ckpt: weights do not fit the span network" in message
    assert "2 missing (first: net.saliency_embed.weight)" in message
    assert "'saliency_to_fusion'" in message and "retrain, or pass the values it was trained with" in message
    assert "\n" not in message


def test_test_with_weights_that_do_not_fit_is_one_line_and_exit_2(
    checkpoints: dict[str, Path], cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`test --ckpt_path` (Lightning loads the weights) answers like `load_checkpoint`."""
    path = _rewritten(
        checkpoints["fit"],
        tmp_path / "resized.ckpt",
        lambda c: c["hyper_parameters"]["hparams"].update(hidden_dim=64),
    )
    code = ground_main([
        "test", "--data.cache", str(cache),
        "--model", str(REPO / "ground" / "configs" / "model" / "span.yaml"),
        "--ckpt_path", str(path),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
    ])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "resized.ckpt: weights do not fit the span network" in errors[0], err[-2000:]
    assert "with another shape (first: net." in errors[0]


def test_not_a_grounding_checkpoint(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt: not a readable checkpoint"):
        load_checkpoint(garbage)
    bare = _rewritten(checkpoints["zoo"], tmp_path / "bare.ckpt", lambda c: c.pop("hyper_parameters"))
    with pytest.raises(CheckpointError, match=r"bare\.ckpt: no model hyperparameters"):
        load_checkpoint(bare)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def _truncated(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[:5000])
    return target


def _pickled_object(source: Path, target: Path) -> Path:
    torch.save({"state_dict": {}, "callback": Path("x")}, target)  # not plain data: weights_only refuses it
    return target


MALFORMED: dict[str, Callable[[Path, Path], Path]] = {
    "state_dict None": lambda s, t: _rewritten(s, t, lambda c: c.update(state_dict=None)),
    "state_dict a list": lambda s, t: _rewritten(s, t, lambda c: c.update(state_dict=[1, 2])),
    "a weight not a tensor": lambda s, t: _rewritten(
        s, t, lambda c: c["state_dict"].update({next(iter(c["state_dict"])): "x"})
    ),
    "hyper_parameters a list": lambda s, t: _rewritten(s, t, lambda c: c.update(hyper_parameters=[1])),
    "hparams not a dict": lambda s, t: _rewritten(s, t, lambda c: c["hyper_parameters"].update(hparams=[1])),
    "unknown model name": lambda s, t: _rewritten(s, t, lambda c: c["hyper_parameters"].update(name="spam")),
    "a tensor, not a dict": lambda s, t: torch.save(torch.zeros(3), t) or t,
    "truncated": _truncated,
    "a text file": lambda s, t: (t.write_text("epoch 3: loss 0.25\n" * 20), t)[1],
    "pickled objects": _pickled_object,
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_checkpoint_is_one_checkpoint_error(
    case: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    path = MALFORMED[case](checkpoints["zoo"], tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"^checkpoint .*bad\.ckpt: ") as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message and "weights_only` set to" not in message, message


def test_a_checkpoint_without_an_encoder_record_loads_with_none(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    # Saved by a module that never saw a cache: dims are then checked instead of encoders.
    path = _rewritten(checkpoints["zoo"], tmp_path / "no_record.ckpt", lambda c: c.update(groundcache=None))
    assert load_checkpoint(path).encoder_record is None


@pytest.mark.parametrize("case", ["state_dict None", "unknown model name", "truncated", "pickled objects"])
def test_a_malformed_checkpoint_under_test_is_one_line_and_exit_2(
    case: str, checkpoints: dict[str, Path], cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = MALFORMED[case](checkpoints["zoo"], tmp_path / "bad.ckpt")
    code = ground_main([
        "test", "--data.cache", str(cache),
        "--model", str(REPO / "ground" / "configs" / "model" / "span.yaml"),
        *TINY_SPAN, "--ckpt_path", str(path), "--trainer.enable_progress_bar", "false",
        "--run_dir", str(tmp_path),
    ])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err


@pytest.mark.parametrize("top_k", [None, "2"])
def test_predict_with_a_checkpoint_keeps_the_command_lines_top_k(
    top_k: str | None, checkpoints: dict[str, Path], cache: Path, tmp_path: Path
) -> None:
    """The checkpoint's hyperparameters replace the model's, except how it decodes (`DECODING_ARGUMENTS`)."""
    out = tmp_path / "predictions.jsonl"
    code = ground_main([
        "predict", "--data.cache", str(cache),
        "--model", str(REPO / "ground" / "configs" / "model" / "span.yaml"),
        *(["--model.top_k", top_k] if top_k else []),
        "--ckpt_path", str(checkpoints["fit"]), "--out", str(out),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
    ])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    most = max(len(row["pred_relevant_windows"]) for row in rows)
    assert most == (int(top_k) if top_k else 10)  # the checkpoint's (the module's default), or the flag's


def test_a_directory_as_checkpoint_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"dir\.ckpt: is not a file"):
        load_checkpoint((tmp_path / "dir.ckpt").mkdir() or tmp_path / "dir.ckpt")
