"""Several training processes (DDP, CPU gloo): the numbers and files of one process, whatever the world size.

The metric test spawns two gloo processes directly; the CLI tests run `python -m ground` as a user
would, with `--trainer.devices 2 --trainer.strategy ddp`, on a cache whose splits hold an odd
number of queries, so the sampler pads one process's share with a repeated query.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cache_schema import CacheReader
from cache_schema.fake import write_fake_cache
from ground.cli import one_row_per_query
from ground.data import GroundingDataModule
from ground.metrics import QVHIGHLIGHTS_LENGTH_BUCKETS, MomentRetrievalMetric

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--model.hparams.hidden_dim",
    "32",
    "--model.hparams.num_layers",
    "1",
    "--model.hparams.num_heads",
    "2",
]
TWO_PROCESSES = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
ONE_PROCESS = ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]


# ---------------------------------------------------------------------------------------------
# The metric under a real sync
# ---------------------------------------------------------------------------------------------


def _query(i: int) -> tuple[torch.Tensor, ...]:
    """Query i as a one-query batch: (index, windows, scores, ground truth, mask), all different."""
    start = float(3 * i)
    return (
        torch.tensor([i]),
        torch.tensor([[[start, start + 4.0 + i], [start + 20.0, start + 26.0]]]),
        torch.tensor([[0.9, 0.2 + 0.05 * i]]),
        torch.tensor([[[start + 1.0, start + 6.0], [start + 40.0, start + 45.0 + i]]]),
        torch.tensor([[True, i % 2 == 0]]),
    )


# Five queries over two processes, as `ground.data` shares them: rank 1's share repeats query 4.
SHARES = {0: [0, 1, 2], 1: [3, 4, 4]}


def _sync_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metric = MomentRetrievalMetric(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
        for i in SHARES[rank]:
            metric.update(*_query(i))
        values = metric.compute()
        torch.save({k: v.item() for k, v in values.items()}, Path(out_dir) / f"rank{rank}.pt")
        # A process without any labelled query still takes part in the gather (as an empty share).
        lonely = MomentRetrievalMetric(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
        for i in SHARES[0] if rank == 0 else []:
            lonely.update(*_query(i))
        values = lonely.compute()
        torch.save({k: v.item() for k, v in values.items()}, Path(out_dir) / f"lonely{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_metric_synced_over_two_processes_equals_one_process(tmp_path: Path) -> None:
    """The reported crash (`if not self.pred_counts` on a synced tensor), and the padding repeat."""
    # fork, not spawn: the children need nothing re-imported (spawn re-imports torch and Lightning).
    mp.start_processes(
        _sync_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    one = MomentRetrievalMetric(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
    for i in range(5):
        one.update(*_query(i))
    expected = {k: v.item() for k, v in one.compute().items()}
    assert expected["MR-full-num_queries"] == 5.0
    only_rank0 = MomentRetrievalMetric(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
    for i in SHARES[0]:
        only_rank0.update(*_query(i))
    expected_lonely = {k: v.item() for k, v in only_rank0.compute().items()}
    for rank in (0, 1):
        for name, want in (("rank", expected), ("lonely", expected_lonely)):
            got = torch.load(tmp_path / f"{name}{rank}.pt")
            assert got.keys() == want.keys()
            for key, value in want.items():
                assert got[key] == value or (math.isnan(got[key]) and math.isnan(value)), (name, rank, key)


def test_shares_cover_the_split_once_plus_padding(tmp_path: Path) -> None:
    """Every process gets the same number of batches; together they hold each query, repeats at the end."""
    path = tmp_path / "cache.h5"
    write_fake_cache(path, n_videos=9, queries_per_video=3, duration_range_sec=(6.0, 20.0))
    data = GroundingDataModule(str(path), batch_size=2)
    n_train = len(data.load("train"))  # loaded before the stand-in trainer, which has no device
    assert len(data.load("val")) == 9
    shares = []
    for rank in range(2):
        data.trainer = type("FakeTrainer", (), {"world_size": 2, "global_rank": rank})()
        loader = data.val_dataloader()
        shares.append([i for batch in loader for i in batch["query_index"].tolist()])
        assert len(loader) == 3
    assert shares == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 8]]
    # Training: one shuffled order per epoch, the same on every process, so the shares are disjoint.
    train_shares = []
    for rank in range(2):
        data.trainer = type("FakeTrainer", (), {"world_size": 2, "global_rank": rank})()
        loader = data.train_dataloader()
        loader.sampler.set_epoch(3)
        train_shares.append([i for batch in loader.sampler for i in batch])
    assert sorted(set(train_shares[0]) | set(train_shares[1])) == list(range(n_train))
    assert len(train_shares[0]) == len(train_shares[1]) == math.ceil(n_train / 2)


def test_gathered_rows_become_one_row_per_query_in_split_order() -> None:
    # Rank 0 predicted q0, q1; rank 1 predicted q2 and, as padding, q2 again.
    rows = [{"qid": "q2", "n": 1}, {"qid": "q2", "n": 2}, {"qid": "q0", "n": 3}, {"qid": "q1", "n": 4}]
    assert one_row_per_query(rows, ["q0", "q1", "q2"], "test") == [rows[2], rows[3], rows[0]]
    with pytest.raises(
        ValueError, match=r"split 'test': 1 of 4 queries have no prediction \(e.g. \['q3'\]\)"
    ):
        one_row_per_query(rows, ["q0", "q1", "q2", "q3"], "test")
    with pytest.raises(
        ValueError, match=r"split 'test': predictions for 1 queries not in it \(e.g. \['q2'\]\)"
    ):
        one_row_per_query(rows, ["q0", "q1"], "test")


# ---------------------------------------------------------------------------------------------
# The real CLI with two processes
# ---------------------------------------------------------------------------------------------


def _ground(*args: str) -> str:
    """Run `python -m ground ARGS` from the repo root as a user would; return its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "ground", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def _common(cache: Path, root: Path) -> list[str]:
    return [
        "--data.cache",
        str(cache),
        "--data.batch_size",
        "2",
        "--model",
        "ground/configs/model/span.yaml",
        *TINY,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(root),
    ]


def _logged(root: Path, prefix: str) -> dict[str, float]:
    """The last value of each `prefix/...` metric in the run's CSV log."""
    (path,) = root.glob("logs/version_*/metrics.csv")
    values = {}
    for row in csv.DictReader(path.open()):
        values.update({k: float(v) for k, v in row.items() if k.startswith(f"{prefix}/") and v != ""})
    return values


def _same_numbers(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == value or (math.isnan(got[key]) and math.isnan(value)), key


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cache with 9 queries per split and a 2-process fit of one epoch on it: (cache, run root)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cache = tmp / "cache.h5"
    write_fake_cache(cache, n_videos=9, queries_per_video=3, duration_range_sec=(6.0, 20.0))
    root = tmp / "fit2"
    _ground("fit", *_common(cache, root), *TWO_PROCESSES, "--trainer.max_epochs", "1")
    return cache, root


@pytest.mark.slow
def test_fit_validation_with_two_processes_equals_one_process(
    ddp_run: tuple[Path, Path], tmp_path: Path
) -> None:
    cache, root = ddp_run
    during_fit = _logged(root, "val")  # 2 processes, at the end of the only epoch
    assert during_fit["val/MR-full-num_queries"] == 9.0  # not 10: the repeated query counts once
    # The best checkpoint is named (and chosen) by the synced value, as with one process.
    (best,) = root.rglob("best-*.ckpt")
    assert best.name == f"best-epoch000-r1iou05-{during_fit['val/MR-full-R1@0.5']:.2f}.ckpt"
    (last,) = root.rglob("last.ckpt")
    _ground("validate", *_common(cache, tmp_path / "one"), *ONE_PROCESS, "--ckpt_path", str(last))
    _same_numbers(_logged(tmp_path / "one", "val"), during_fit)


@pytest.mark.slow
def test_test_with_two_processes_equals_one_process(ddp_run: tuple[Path, Path], tmp_path: Path) -> None:
    cache, root = ddp_run
    (last,) = root.rglob("last.ckpt")
    _ground("test", *_common(cache, tmp_path / "two"), *TWO_PROCESSES, "--ckpt_path", str(last))
    _ground("test", *_common(cache, tmp_path / "one"), *ONE_PROCESS, "--ckpt_path", str(last))
    two, one = _logged(tmp_path / "two", "test"), _logged(tmp_path / "one", "test")
    assert one["test/MR-full-num_queries"] == 9.0
    _same_numbers(two, one)


@pytest.mark.slow
def test_predict_with_two_processes_writes_one_process_submission(
    ddp_run: tuple[Path, Path], tmp_path: Path
) -> None:
    cache, root = ddp_run
    (last,) = root.rglob("last.ckpt")
    # One query per batch: a batch is padded to its longest video, which changes float sums in the
    # last bits, so a query batched with other neighbours than in the 1-process run would differ
    # by ~1e-6 in the 6th decimal. Alone in its batch it computes the same arithmetic either way.
    args = ["--data.eval_batch_size", "1", "--ckpt_path", str(last)]
    two, one = tmp_path / "two.jsonl", tmp_path / "one.jsonl"
    output = _ground("predict", *_common(cache, tmp_path / "r2"), *TWO_PROCESSES, *args, "--out", str(two))
    assert output.count("wrote 9 predictions") == 1  # gathered from both shares; rank 0 writes, once
    _ground("predict", *_common(cache, tmp_path / "r1"), *ONE_PROCESS, *args, "--out", str(one))
    rows = [json.loads(line) for line in two.read_text().splitlines()]
    assert [r["qid"] for r in rows] == [q.qid for q in CacheReader(cache).queries("test")]
    assert two.read_text() == one.read_text()


@pytest.mark.slow
def test_resume_a_two_process_run_from_its_last_checkpoint(
    ddp_run: tuple[Path, Path], tmp_path: Path
) -> None:
    cache, root = ddp_run
    (last,) = root.rglob("last.ckpt")
    first = torch.load(last, map_location="cpu", weights_only=True)
    resumed_root = tmp_path / "resumed"
    _ground(
        "fit",
        *_common(cache, resumed_root),
        *TWO_PROCESSES,
        "--trainer.max_epochs",
        "2",
        "--ckpt_path",
        str(last),
    )
    resumed = torch.load(next(resumed_root.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    # 9 training queries: shares of 5, batches of 2 -> 3 steps per epoch on each process.
    assert (first["epoch"], first["global_step"]) == (0, 3)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 6)
    assert resumed["groundcache"]["encoders"] == first["groundcache"]["encoders"]
    # The resumed run's schedule spans its own 2 epochs (6 steps), continuing at step 3.
    assert first["groundcache"]["lr_schedule"]["total_steps"] == 3
    assert resumed["groundcache"]["lr_schedule"]["total_steps"] == 6
