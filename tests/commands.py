"""Running the README's commands as a user would, for the journey tests: one subprocess each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_CONFIG = REPO / "ground" / "configs" / "data" / "synthetic.yaml"
MODEL_CONFIG = REPO / "ground" / "configs" / "model" / "span.yaml"
TINY_SPAN = [
    "--model.hparams.hidden_dim",
    "32",
    "--model.hparams.num_layers",
    "1",
    "--model.hparams.num_heads",
    "2",
    "--model.hparams.conv_dilations",
    "[1, 2]",
]
"""A 32-wide one-layer `span`: what the journeys train, in seconds."""
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
COMMAND_LIMIT_SEC = 900
"""A hang guard for one command, not a speed check."""


def run(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """`python -m ARGS...` in `cwd`, offline, importing this checkout.

    With `ok` (default) a non-zero exit fails the test, showing the command's last output.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_LIMIT_SEC,
    )
    if ok and result.returncode != 0:
        pytest.fail(
            f"`python -m {' '.join(args)}` exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
        )
    return result
