"""A bad model hyperparameter is one `error:` line naming the model and exit 2, for every model.

Unknown keys (a typo on `--model.hparams.KEY`), values a constructor refuses, and values of the
wrong type all reach `build_model`, which turns them into `ModelConfigError`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cache_schema.fake import write_fake_cache
from ground.cli import main as ground_main
from ground.errors import ModelConfigError
from ground.models import build_model, trainable_models

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model_config") / "cache.h5"
    write_fake_cache(path, n_videos=6, queries_per_video=1)
    return path


@pytest.mark.parametrize("name", trainable_models())
def test_an_unknown_hyperparameter_names_the_model_and_the_key(name: str) -> None:
    with pytest.raises(ModelConfigError, match=rf"^model {name}: .*'hiden_dim'.*its hyperparameters are: "):
        build_model(name, video_dim=8, text_dim=8, hiden_dim=16)


@pytest.mark.parametrize("name", ["span", "regress", "localglobal", "capsule"])
@pytest.mark.parametrize(("key", "value"), [("num_heads", 0), ("hidden_dim", -8)])
def test_sizes_torch_cannot_build_are_refused_naming_the_model(name: str, key: str, value: int) -> None:
    with pytest.raises(ModelConfigError, match=rf"^model {name}: "):
        build_model(name, video_dim=8, text_dim=8, **{key: value})


def test_a_refused_value_keeps_the_constructor_message() -> None:
    refused = r"^model regress: pooling must be 'mean' or 'attention', got 'bogus'"
    with pytest.raises(ModelConfigError, match=refused):
        build_model("regress", video_dim=8, text_dim=8, pooling="bogus")
    with pytest.raises(ModelConfigError, match=r"^model span: .*'hidden_dim': 'abc'"):
        build_model("span", video_dim=8, text_dim=8, hidden_dim="abc")


@pytest.mark.parametrize(
    ("name", "flag", "value", "expected"),
    [
        ("span", "--model.hparams.hiden_dim", "16", r"^error: model span: .*'hiden_dim'"),
        ("regress", "--model.hparams.pooling", "bogus", r"^error: model regress: pooling must be"),
        ("capsule", "--model.hparams.evidence_weight", "-1", r"^error: model capsule: "),
    ],
)
def test_fit_with_a_bad_hyperparameter_is_one_line_and_exit_2(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, flag: str, value: str,
    expected: str,
) -> None:
    config = REPO_ROOT / "ground" / "configs" / "model" / f"{name}.yaml"
    code = ground_main([
        "fit", "--data.cache", str(cache), "--model", str(config),
        flag, value, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
    ])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert re.search(expected, lines[0]), lines[0]


def test_fitting_a_baseline_is_one_line_and_exit_2(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = REPO_ROOT / "ground" / "configs" / "model" / "prior.yaml"
    code = ground_main([
        "fit", "--data.cache", str(cache), "--model", str(config),
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
    ])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        line for line in err.splitlines() if "model prior is a baseline and has nothing to fit" in line
    ]


@pytest.mark.parametrize("key", ["saliency_probe", "saliency_context", "saliency_to_fusion"])
def test_span_switches_must_be_booleans(key: str) -> None:
    with pytest.raises(ModelConfigError, match=rf"^model span: {key} must be true or false, got 'maybe'"):
        build_model("span", video_dim=8, text_dim=8, **{key: "maybe"})


@pytest.mark.parametrize("command", ["fit", "test", "validate"])
def test_an_unknown_model_name_is_one_line_listing_the_models(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code = ground_main([
        command, "--data.cache", str(cache), "--model.name", "spam",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
    ])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "unknown model 'spam'; available models: capsule, " in lines[0], err


@pytest.mark.parametrize(
    ("name", "key", "value", "expected"),
    [
        ("span", "start_end_weight", -1.0, "start_end_weight must be a number >= 0, got -1.0"),
        ("capsule", "alignment_weight", "2", "alignment_weight must be a number >= 0, got '2'"),
        ("ianet", "boundary_weight", True, "boundary_weight must be a number >= 0, got True"),
        ("localglobal", "segment_weight", float("inf"), "segment_weight must be a number >= 0, got inf"),
        ("span", "nms_iou_threshold", 5.0, r"nms_iou_threshold must be a number in \[0, 1\], got 5.0"),
        ("capsule", "nms_iou_threshold", -0.1, r"nms_iou_threshold must be a number in \[0, 1\]"),
        ("span", "boundary_sigma_clips", float("nan"), "boundary_sigma_clips is NaN"),
        ("regress", "position_scale", float("nan"), "position_scale is NaN"),
        ("regress", "topk_shifts", [0.0, float("nan")], "topk_shifts is NaN"),
        ("span", "conv_dilations", [1, 0], r"conv_dilations must be whole numbers >= 1, got \[1, 0\]"),
        ("regress", "num_layers", 0, "num_layers and feedforward_dim must be >= 1"),
        ("regress", "feedforward_dim", 0, "num_layers and feedforward_dim must be >= 1"),
        ("capsule", "branch_dim", 0, "branch_dim and capsule_dim must be >= 1"),
        ("capsule", "capsule_dim", 0, "branch_dim and capsule_dim must be >= 1"),
    ],
)
def test_values_that_would_fail_at_the_first_step_are_refused_at_build(
    name: str, key: str, value: object, expected: str
) -> None:
    """Each of these built a network that failed (or gave a NaN loss) only at its first forward,
    training step or validation: now `build_model` refuses it in one line."""
    with pytest.raises(ModelConfigError, match=rf"^model {name}: .*{expected}"):
        build_model(name, video_dim=8, text_dim=8, **{key: value})
