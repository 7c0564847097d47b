"""The demo's training is reproducible: the same seed on the same cache gives the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cache_schema.fake import write_fake_cache
from ground.data import GroundingDataModule
from ground.demo import train_span


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "cache.h5"
    write_fake_cache(path, n_videos=9, queries_per_video=2, duration_range_sec=(6.0, 20.0))
    return path


def _weights(cache: Path, run_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)  # the demo's thread policy
    model, best = train_span(GroundingDataModule(str(cache), batch_size=8), run_dir, epochs=2, seed=seed)
    assert Path(best).is_file()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights(cache: Path, tmp_path: Path) -> None:
    first = _weights(cache, tmp_path / "a", seed=0)
    second = _weights(cache, tmp_path / "b", seed=0)
    other = _weights(cache, tmp_path / "c", seed=1)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=0, rtol=0, msg=name)
    assert any(not torch.equal(first[name], other[name]) for name in first), "the seed changes nothing"
