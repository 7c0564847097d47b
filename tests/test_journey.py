"""The README's path, end to end: each command runs as a subprocess on the previous one's output file.

In one temporary folder: synthetic extract -> `cache_schema validate` / `inspect` -> `ground fit`
(LightningCLI) -> `ground test --ckpt_path` -> `ground predict --out` -> `ground eval
--submission` -> `ground ground-video` (a raw mp4 and a cached id) -> `ground export` (onnx,
torchscript) -> `ground report` -> `ground serve` (POST /ground, GET /videos) ->
`calibrate-presence`; and `make zoo`'s own chain (the zoo's extract config -> `ground zoo
--jobs 2`). Every consumer runs on the checkpoint of `ground fit` and on the one of
`ground demo`, so both checkpoint writers feed every reader. A `ground fit` on two processes
(DDP, gloo) writes a checkpoint that `ground validate` on one process scores as the two did.
Settings are tiny (10 videos, 2 epochs, a 32-wide `span`); the unit tests of each command live
beside their modules, this file tests the seams between them.

The commands that only need the cache or a checkpoint run two at a time in a thread pool (`plan`,
submitted in dependency order, so a job waits only on one already running); each test then
asserts on its command's result. Two at a time is what the 2-core CI machine runs in parallel.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import DATA_CONFIG, MODEL_CONFIG, QUIET, REPO, TINY_SPAN, run

N_VIDEOS = 10  # the fewest with two val videos: calibrate-presence needs negatives from another video
TWO_PROCESSES = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
WRITERS = ("fit", "demo")
PARALLEL_COMMANDS = 2
EXPORT_FORMATS = ("onnx", "torchscript")


# -- the chain's files, each made once ----------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("journey")


@pytest.fixture(scope="module")
def cache(workdir: Path) -> Path:
    """`make extract DATASET=synthetic`, run in `workdir` so the config's data/synthetic lands there."""
    run(
        workdir,
        "extract",
        "--config",
        str(REPO / "extract" / "configs" / "synthetic.yaml"),
        "--synthetic.n_videos",
        str(N_VIDEOS),
        "--num_workers",
        "0",
    )
    return workdir / "data" / "synthetic" / "cache.h5"


@pytest.fixture(scope="module")
def annotations(cache: Path) -> list[dict]:
    """The synthetic dataset's own annotation rows (one per query), written beside the cache."""
    path = cache.parent / "annotations.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _split(annotations: list[dict], split: str) -> list[dict]:
    rows = [row for row in annotations if row["split"] == split]
    assert rows, f"the synthetic dataset has no {split} query"
    return rows


def _fit(workdir: Path, *extra: str) -> Path:
    """`make train MODEL=span DATASET=synthetic` with tiny overrides; the best checkpoint it names.

    It is printed once, however many processes train (`extra`: more arguments, the later win).
    """
    result = run(
        workdir,
        "ground",
        "fit",
        "--data",
        str(DATA_CONFIG),
        "--model",
        str(MODEL_CONFIG),
        *TINY_SPAN,
        "--data.batch_size",
        "8",
        "--trainer.max_epochs",
        "2",
        *QUIET,
        *extra,
    )
    [best] = re.findall(r"^best checkpoint: (.+\.ckpt)$", result.stdout, flags=re.M)
    path = workdir / best
    assert path.is_file(), f"fit printed {best}, which does not exist"
    return path


def _demo(workdir: Path, cache: Path) -> Path:
    """`make demo` on the journey's dataset (already extracted, so it only trains and tests)."""
    run(
        workdir,
        "ground",
        "demo",
        "--data-dir",
        str(cache.parent),
        "--epochs",
        "2",
        "--run-dir",
        str(workdir / "runs" / "demo"),
    )
    path = workdir / "runs" / "demo" / "checkpoints" / "best.ckpt"
    assert path.is_file()
    return path


def _out_dir(workdir: Path, ckpt: Path) -> Path:
    """A folder for one checkpoint's outputs."""
    folder = workdir / "out" / ckpt.parent.parent.name / ckpt.stem
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def plan(workdir: Path, cache: Path) -> Iterator[dict[tuple[str, str], Future]]:
    """Every command that needs only the cache or a checkpoint, submitted at once; (writer, step) -> future.

    Jobs are submitted in dependency order and taken first in, first out, so a job that waits on
    another's checkpoint waits on one already running: the pool cannot deadlock.
    """
    jobs: dict[tuple[str, str], Future] = {}
    with ThreadPoolExecutor(max_workers=PARALLEL_COMMANDS, thread_name_prefix="journey") as pool:

        def submit(writer: str, step: str, job: Callable[[Path], object]) -> None:
            ckpt = jobs[(writer, "ckpt")]
            jobs[(writer, step)] = pool.submit(lambda: job(ckpt.result()))

        jobs[("fit", "ckpt")] = pool.submit(_fit, workdir)
        jobs[("demo", "ckpt")] = pool.submit(_demo, workdir, cache)
        jobs[("ddp", "fit")] = pool.submit(_fit_two_processes, workdir)
        for writer in WRITERS:
            submit(writer, "test", lambda ckpt: _test_metrics(ckpt, workdir))
            submit(writer, "predict", lambda ckpt: _predict(ckpt, workdir))
            for fmt in EXPORT_FORMATS:
                submit(writer, f"export-{fmt}", lambda ckpt, fmt=fmt: _export(ckpt, workdir, fmt))
            submit(writer, "report", lambda ckpt: _report(ckpt, workdir, cache))
            submit(writer, "ground-video", lambda ckpt: _ground_video(ckpt, workdir, cache))
        try:
            yield jobs
        finally:
            # A failed test must not wait for the queue: drop what has not started.
            pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def fit_ckpt(plan: dict[tuple[str, str], Future]) -> Path:
    return plan[("fit", "ckpt")].result()


@pytest.fixture(scope="module")
def demo_ckpt(plan: dict[tuple[str, str], Future]) -> Path:
    return plan[("demo", "ckpt")].result()


@pytest.fixture(scope="module", params=WRITERS)
def writer(request: pytest.FixtureRequest) -> str:
    """Each checkpoint writer in turn; every consumer below runs on the checkpoint of both."""
    return request.param


@pytest.fixture(scope="module")
def ckpt(writer: str, plan: dict[tuple[str, str], Future]) -> Path:
    return plan[(writer, "ckpt")].result()


@pytest.fixture(scope="module")
def out(ckpt: Path, workdir: Path) -> Path:
    """A folder for this checkpoint's outputs."""
    return _out_dir(workdir, ckpt)


@pytest.fixture(scope="module")
def gt_file(workdir: Path, annotations: list[dict]) -> Path:
    """The test split's ground truth in the QVHighlights format `ground eval --gt` reads."""
    path = workdir / "test_gt.jsonl"
    rows = [
        {"qid": r["qid"], "vid": r["vid"], "duration": r["duration"], "relevant_windows": r["windows"]}
        for r in _split(annotations, "test")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _in_range(name: str, value: float, low: float = 0.0, high: float = 100.0) -> None:
    assert math.isfinite(value) and low <= value <= high, f"{name} = {value}"


def _assert_windows_inside(windows: list[tuple[float, float]], duration_sec: float, what: str) -> None:
    assert windows, f"{what}: no window"
    for start, end in windows:
        # Predictions are rounded to 1e-4 s in submission files.
        assert 0.0 <= start < end <= duration_sec + 1e-3, (
            f"{what}: window ({start}, {end}) of {duration_sec} s"
        )


# -- the chain -------------------------------------------------------------------------------------


def test_cache_validates_and_inspects(workdir: Path, cache: Path, annotations: list[dict]) -> None:
    assert run(workdir, "cache_schema", "validate", str(cache)).stdout.strip().endswith(": valid")
    text = run(workdir, "cache_schema", "inspect", str(cache)).stdout
    assert f"videos {N_VIDEOS}, queries {len(annotations)}" in text
    assert re.search(r"video\s.*tiny_clip\s.*32", text) and re.search(r"text\s.*tiny_clip\s.*32", text)


def test_fit_checkpoint_holds_the_overrides(fit_ckpt: Path) -> None:
    hparams = torch.load(fit_ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["name"] == "span" and hparams["video_dim"] == 32 and hparams["text_dim"] == 32
    assert hparams["hparams"]["hidden_dim"] == 32 and hparams["hparams"]["conv_dilations"] == [1, 2]


def _test_metrics(ckpt: Path, workdir: Path) -> dict[str, float]:
    """`ground test --ckpt_path`: the metrics its CSV logger wrote."""
    run_dir = _out_dir(workdir, ckpt) / "test_runs"
    run(
        workdir,
        "ground",
        "test",
        "--data",
        str(DATA_CONFIG),
        "--model",
        str(MODEL_CONFIG),
        "--ckpt_path",
        str(ckpt),
        "--run_dir",
        str(run_dir),
        *QUIET,
    )
    [metrics_csv] = run_dir.rglob("metrics.csv")
    [row] = [r for r in csv.DictReader(metrics_csv.open()) if r.get("test/MR-full-R1@0.5")]
    return {k: float(v) for k, v in row.items() if k.startswith("test/") and v != ""}


@pytest.fixture(scope="module")
def tested_metrics(writer: str, plan: dict[tuple[str, str], Future]) -> dict[str, float]:
    return plan[(writer, "test")].result()


def test_test_logs_official_metrics(tested_metrics: dict[str, float], annotations: list[dict]) -> None:
    assert tested_metrics["test/MR-full-num_queries"] == len(_split(annotations, "test"))
    for key in ("R1@0.5", "R1@0.7", "R5@0.5", "mIoU", "mAP"):
        _in_range(key, tested_metrics[f"test/MR-full-{key}"])


def _predict(ckpt: Path, workdir: Path) -> Path:
    """`ground predict --out`: the test split's submission file."""
    preds = _out_dir(workdir, ckpt) / "preds.jsonl"
    run(
        workdir,
        "ground",
        "predict",
        "--data",
        str(DATA_CONFIG),
        "--model",
        str(MODEL_CONFIG),
        "--ckpt_path",
        str(ckpt),
        "--out",
        str(preds),
        *QUIET,
    )
    return preds


@pytest.fixture(scope="module")
def predictions(writer: str, plan: dict[tuple[str, str], Future]) -> Path:
    return plan[(writer, "predict")].result()


@pytest.fixture(scope="module")
def eval_brief(predictions: Path, out: Path, workdir: Path, gt_file: Path) -> dict[str, float]:
    """`ground eval --submission` on predict's file: the official metrics' brief section."""
    metrics_path = out / "eval.json"
    run(
        workdir,
        "ground",
        "eval",
        "--submission",
        str(predictions),
        "--gt",
        str(gt_file),
        "--out",
        str(metrics_path),
    )
    return json.loads(metrics_path.read_text())["brief"]


def test_predict_writes_a_submission(predictions: Path, annotations: list[dict]) -> None:
    truth = {r["qid"]: r for r in _split(annotations, "test")}
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["qid"] for r in rows) == sorted(truth)
    for row in rows:
        gt = truth[row["qid"]]
        assert row["vid"] == gt["vid"] and row["query"] == gt["query"]
        _assert_windows_inside([w[:2] for w in row["pred_relevant_windows"]], gt["duration"], row["qid"])
        scores = [w[2] for w in row["pred_relevant_windows"]]
        assert scores == sorted(scores, reverse=True)
        assert len(row["pred_saliency_scores"]) == math.ceil(gt["duration"] / 2.0)


def test_eval_scores_the_submission(eval_brief: dict[str, float], tested_metrics: dict[str, float]) -> None:
    for key in ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP"):
        _in_range(key, eval_brief[key])
    # The submission holds the test command's predictions: the official R1 is the same number.
    for key in ("MR-full-R1@0.5", "MR-full-R1@0.7"):
        assert eval_brief[key] == pytest.approx(tested_metrics[f"test/{key}"], abs=0.01), key


def test_eval_map_equals_test_map(eval_brief: dict[str, float], tested_metrics: dict[str, float]) -> None:
    # Both score float64 ground truth: in float32, an edge like 3.3 s moved an IoU of exactly 0.5
    # below the threshold and `ground test` reported less mAP than `ground eval` (demo checkpoint).
    assert eval_brief["MR-full-mAP"] == pytest.approx(tested_metrics["test/MR-full-mAP"], abs=0.01)


def _first_test_row(cache: Path) -> dict:
    rows = (
        json.loads(line)
        for line in (cache.parent / "annotations.jsonl").read_text(encoding="utf-8").splitlines()
    )
    return next(row for row in rows if row["split"] == "test")


def _ground_video(ckpt: Path, workdir: Path, cache: Path) -> dict[str, dict]:
    """`ground ground-video --json` on the first test query, on its mp4 and on its cached id."""
    row = _first_test_row(cache)
    answers = {}
    for source, extra in ((str(cache.parent / row["video"]), []), (row["vid"], ["--cache", str(cache)])):
        result = run(
            workdir,
            "ground",
            "ground-video",
            "--ckpt",
            str(ckpt),
            "--video",
            source,
            "--query",
            row["query"],
            "--json",
            *extra,
        )
        [answers[source]] = json.loads(result.stdout)
    return answers


def test_ground_video_on_a_file_and_a_cached_id(
    writer: str, plan: dict[tuple[str, str], Future], cache: Path
) -> None:
    row = _first_test_row(cache)
    answers = plan[(writer, "ground-video")].result()
    for source, answer in answers.items():
        assert answer["query"] == row["query"]
        assert answer["duration_sec"] == pytest.approx(row["duration"], abs=0.05)
        _assert_windows_inside(
            [(w["start_sec"], w["end_sec"]) for w in answer["windows"]], answer["duration_sec"], source
        )
        _in_range("presence", answer["presence"], high=1.0)
    # The cache holds the file's features: the same presence up to fp16 storage.
    file_answer, cached_answer = answers.values()
    assert cached_answer["presence"] == pytest.approx(file_answer["presence"], abs=2e-2)


def _first_test_batch(cache: Path) -> dict:
    from ground.data import GroundingDataModule

    # The whole test split in one batch: its videos differ in length, so the batch has padding.
    data = GroundingDataModule(str(cache), batch_size=1024)
    return next(iter(data.test_dataloader()))


def _export(ckpt: Path, workdir: Path, fmt: str) -> Path:
    """`ground export --format FMT`: the exported file, written beside the checkpoint."""
    from ground.export import default_output

    run(workdir, "ground", "export", "--ckpt", str(ckpt), "--format", fmt)
    return default_output(ckpt, fmt)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_matches_pytorch_on_a_cache_batch(
    ckpt: Path, writer: str, plan: dict[tuple[str, str], Future], cache: Path, fmt: str
) -> None:
    from ground.export import INPUT_NAMES, sidecar_path
    from ground.module import load_checkpoint

    exported = plan[(writer, f"export-{fmt}")].result()
    record = json.loads(sidecar_path(exported).read_text())
    names = [o["name"] for o in record["outputs"]]
    inputs = [i["name"] for i in record["inputs"]]

    batch = _first_test_batch(cache)
    assert not batch["video_mask"].all(), "the batch should include padding clips"
    torch.set_num_threads(1)
    with torch.no_grad():
        expected = {k: v.numpy() for k, v in load_checkpoint(ckpt).net(batch).items()}
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
            got = session.run(names, {k: batch[k].numpy() for k in inputs})
        else:
            got = [t.numpy() for t in torch.jit.load(str(exported))(*(batch[k] for k in INPUT_NAMES))]
    assert names == list(expected)
    for name, value in zip(names, got, strict=True):
        ref = expected[name]
        assert value.shape == ref.shape, name
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(np.isfinite(value), finite, err_msg=f"{name}: padding differs")
        np.testing.assert_allclose(value[finite], ref[finite], atol=1e-4, rtol=1e-4, err_msg=name)


def _report(ckpt: Path, workdir: Path, cache: Path) -> Path:
    """`ground report` on the val split: the report folder."""
    report = _out_dir(workdir, ckpt) / "report"
    run(
        workdir,
        "ground",
        "report",
        "--ckpt",
        str(ckpt),
        "--cache",
        str(cache),
        "--split",
        "val",
        "--out",
        str(report),
    )
    return report


def test_report(writer: str, plan: dict[tuple[str, str], Future], annotations: list[dict]) -> None:
    report = plan[(writer, "report")].result()
    record = json.loads((report / "metrics.json").read_text())
    assert record["num_queries"] == len(_split(annotations, "val"))
    for key in ("MR-full-R1@0.5", "MR-full-mIoU"):
        _in_range(key, record["model"]["metrics"][key])
    html = (report / "index.html").read_text()
    assert record["figures"], "the report has no figure"
    for name in record["figures"]:  # file name -> caption
        assert (report / name).is_file() and name in html


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 200
        return json.loads(response.read())


def _pause(server: subprocess.Popen) -> None:
    """Wait half a second, or less if the server exits meanwhile."""
    try:
        server.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        pass


def test_serve(ckpt: Path, out: Path, workdir: Path, cache: Path, annotations: list[dict]) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (out / "serve.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "ground",
        "serve",
        "--ckpt",
        str(ckpt),
        "--media-root",
        str(cache.parent),
    ]
    command += ["--cache", str(cache), "--port", str(port)]
    server = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Bounded wait for start-up (imports, loading the checkpoint): polls, then gives up.
        for _ in range(600):
            if server.poll() is not None:
                pytest.fail(f"serve exited {server.returncode}:\n{(out / 'serve.log').read_text()[-4000:]}")
            try:
                health = _http(f"{base}/health")
                break
            except OSError:
                _pause(server)
        else:
            pytest.fail(f"serve did not answer /health:\n{(out / 'serve.log').read_text()[-4000:]}")
        assert health["checkpoint"] == ckpt.name and health["cached_videos"] == N_VIDEOS

        videos = {v["id"]: v for v in _http(f"{base}/videos")["videos"]}
        by_vid = {r["vid"]: r for r in annotations}
        assert {vid for vid, v in videos.items() if v["kind"] == "cache"} == set(by_vid)
        for vid, row in by_vid.items():
            assert videos[vid]["url"] == f"/media/{row['video']}"
            assert videos[vid]["duration_sec"] == pytest.approx(row["duration"], abs=0.05)

        row = _split(annotations, "test")[0]
        answer = _http(f"{base}/ground", {"video_id": row["vid"], "queries": [row["query"]], "top_k": 3})
        [result] = answer["results"]
        assert answer["video_id"] == row["vid"] and result["query"] == row["query"]
        assert 1 <= len(result["windows"]) <= 3
        _assert_windows_inside(
            [(w["start_sec"], w["end_sec"]) for w in result["windows"]],
            answer["duration_sec"],
            "POST /ground",
        )
        assert result["ground_truth"] == [list(w) for w in row["windows"]]
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_calibrate_presence(
    ckpt: Path, writer: str, plan: dict[tuple[str, str], Future], workdir: Path, cache: Path
) -> None:
    from ground.predict import Grounder, presence_path

    # The calibration changes every later load of the checkpoint: the other commands go first.
    for (job_writer, _), job in plan.items():
        if job_writer == writer:
            job.exception()  # waits; a failed job is reported by its own test
    run(workdir, "ground", "calibrate-presence", "--ckpt", str(ckpt), "--cache", str(cache))
    record = json.loads(presence_path(ckpt).read_text())
    _in_range("threshold", record["threshold"], high=1.0)
    _in_range("auroc", record["auroc"], high=1.0)
    # Every later load of the checkpoint uses it.
    assert Grounder.from_checkpoint(ckpt).presence_threshold == pytest.approx(record["threshold"])


# -- two training processes ------------------------------------------------------------------------


def _logged(run_dir: Path, prefix: str) -> dict[str, float]:
    """The last logged value of each `prefix/...` metric in the run's CSV log."""
    [path] = run_dir.rglob("metrics.csv")
    values: dict[str, float] = {}
    for row in csv.DictReader(path.open()):
        values.update({k: float(v) for k, v in row.items() if k.startswith(f"{prefix}/") and v != ""})
    return values


def _fit_two_processes(workdir: Path) -> tuple[Path, dict[str, float]]:
    """`ground fit` on 2 CPU processes (DDP, gloo), one epoch: its best checkpoint and last val metrics."""
    run_dir = workdir / "runs" / "ddp"
    best = _fit(workdir, "--trainer.max_epochs", "1", *TWO_PROCESSES, "--run_dir", str(run_dir))
    return best, _logged(run_dir, "val")


def test_a_two_process_fit_validates_like_one_process(
    plan: dict[tuple[str, str], Future], workdir: Path, annotations: list[dict]
) -> None:
    best, during_fit = plan[("ddp", "fit")].result()
    assert during_fit["val/MR-full-num_queries"] == len(_split(annotations, "val"))
    # Its checkpoint, validated by one process, gives the numbers the two processes logged.
    run_dir = workdir / "runs" / "ddp-validate"
    run(
        workdir,
        "ground",
        "validate",
        "--data",
        str(DATA_CONFIG),
        "--model",
        str(MODEL_CONFIG),
        "--ckpt_path",
        str(best),
        "--run_dir",
        str(run_dir),
        *QUIET,
    )
    alone = _logged(run_dir, "val")
    assert alone.keys() == during_fit.keys()
    for key, value in during_fit.items():
        assert alone[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_make_zoo_on_the_zoo_set(workdir: Path, annotations: list[dict]) -> None:
    """`make zoo`'s own chain: extract/configs/synthetic_zoo.yaml (the demo's videos and splits plus
    test-only videos) -> `ground zoo --jobs 2` -> one table of every model and a margin note."""
    run(
        workdir,
        "extract",
        "--config",
        str(REPO / "extract" / "configs" / "synthetic_zoo.yaml"),
        "--synthetic.n_videos",
        str(N_VIDEOS),
        "--synthetic.extra_test_videos",
        "3",
        "--num_workers",
        "0",
    )
    zoo_rows = [
        json.loads(line)
        for line in (workdir / "data" / "synthetic_zoo" / "annotations.jsonl").read_text().splitlines()
    ]
    # The first N_VIDEOS videos are the demo set's, in the same splits; the extras only add test queries.
    assert zoo_rows[: len(annotations)] == annotations
    assert {row["split"] for row in zoo_rows[len(annotations):]} == {"test"}
    result = run(
        workdir,
        "ground",
        "zoo",
        "--cache",
        "data/synthetic_zoo/cache.h5",
        "--models",
        "probe",
        "zeroshot",
        "--epochs",
        "1",
        "--jobs",
        "2",
        "--seeds",
        "1",
        "--no-speed",
        "--no-write",
        "--run-dir",
        "runs/zoo",
        "--rows-out",
        "runs/zoo/rows.json",
    )
    rows = json.loads((workdir / "runs" / "zoo" / "rows.json").read_text())
    assert sorted(r["model"] for r in rows) == ["probe", "zeroshot"]
    assert "| probe |" in result.stdout and "| zeroshot (baseline) |" in result.stdout
    test_queries = sum(row["split"] == "test" for row in zoo_rows)
    assert f"on {test_queries} test queries the standard error" in result.stdout
