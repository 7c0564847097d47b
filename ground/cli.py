"""`python -m ground`: fit / validate / test / predict on LightningCLI, and the commands in `COMMANDS`.

    python -m ground fit --data ground/configs/data/synthetic.yaml --model ground/configs/model/span.yaml
    python -m ground test --data ... --model ... --ckpt_path runs/synthetic/span/checkpoints/best.ckpt
    python -m ground predict --data ... --model ... --ckpt_path ... --out predictions.jsonl
    python -m ground eval --submission PRED.jsonl --gt GT.jsonl [--out metrics.json]
    python -m ground demo

Feature dims are linked from the data module (the cache's encoder table) into the model. A data
config (ground/configs/data/<dataset>.yaml) is a full config: the `data` arguments plus the
dataset's training recipe (`trainer.max_epochs`, `model.lr`, `data.batch_size`; docs/models.md);
`--data FILE` and `--config FILE` both take it whole (`full_data_configs_first`).
A fit must have an epoch or step limit for the learning-rate schedule to span
(`ground.module.check_stopping_rule`).
`python -m ground --help` lists every command. Bad input (a cache of another schema version, a
truncated cache, a checkpoint trained on other encoders, ...) stops a command with one `error:`
line naming the item and exit status 2 (`cache_schema.cli.error_boundary`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cache_schema.cli import run_commands
from ground.data import GroundingDataModule
from ground.errors import GroundingInputError
from ground.models import get_model_class, trainable_models
from ground.module import GroundingModule, check_stopping_rule, read_checkpoint

MONITOR = "val/MR-full-R1@0.5"
PROG = "python -m ground"


DECODING_ARGUMENTS = ("top_k", "eval_max_clips")
"""`GroundingModule` arguments that set how a network decodes, not what it is. LightningCLI
replaces the model's arguments by the checkpoint's under ``--ckpt_path``; these keep the value
given on the command line (``--model.top_k 5``)."""


class GroundCLI(LightningCLI):
    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        # `run_lightning` passes every argument through `args`, so sys.argv is never read and
        # LightningCLI's warning about receiving both (emitted whenever sys.argv has arguments)
        # would fire on every command-line call for nothing.
        self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path:  # Lightning reads it next (its hyperparameters); a bad file is one line here
            read_checkpoint(ckpt_path)
        given = {arg.split("=", 1)[0] for arg in args if arg.startswith("--model.")}
        self._decoding = {
            key: self.config[subcommand].model[key]
            for key in DECODING_ARGUMENTS
            if ckpt_path and f"--model.{key}" in given
        }

    def _parse_ckpt_path(self) -> None:
        super()._parse_ckpt_path()  # the checkpoint's hyperparameters replace the model's arguments
        for key, value in self._decoding.items():
            self.config[f"{self.config.subcommand}.model.{key}"] = value

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.video_dim", "model.video_dim", apply_on="instantiate")
        parser.link_arguments("data.text_dim", "model.text_dim", apply_on="instantiate")
        parser.link_arguments("data.adapter_source", "model.adapter_source", apply_on="instantiate")
        parser.link_arguments("data.length_buckets", "model.length_buckets", apply_on="parse")
        parser.add_argument(
            "--run_dir", default="runs", help="logs and checkpoints go to RUN_DIR/<dataset>/<model>"
        )
        parser.add_argument("--out", default=None, help="predict: where to write predictions (jsonl)")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        dataset = Path(config.data.cache).parent.name or "cache"
        trainer = config.trainer
        get_model_class(config.model.name)  # an unknown name: one line listing the registered ones
        if self.subcommand == "fit" and config.model.name not in trainable_models():
            raise GroundingInputError(
                f"model {config.model.name} is a baseline and has nothing to fit (trainable ones are "
                f"{', '.join(trainable_models())}); evaluate a baseline with "
                "`python -m ground test --data ... --model ...`"
            )
        if self.subcommand == "fit" and not trainer.fast_dev_run:
            check_stopping_rule(trainer.max_epochs, trainer.max_steps)
        if trainer.default_root_dir is None:
            trainer.default_root_dir = str(Path(config.run_dir) / dataset / config.model.name)
        root = Path(trainer.default_root_dir)
        if trainer.precision is None:
            trainer.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
        if trainer.logger is None or trainer.logger is True:
            self._loggers = [CSVLogger(str(root), name="logs"), TensorBoardLogger(str(root), name="tb")]
        else:
            self._loggers = None

    def instantiate_trainer(self, **kwargs):
        if getattr(self, "_loggers", None):
            kwargs["logger"] = self._loggers
        config = self.config[self.subcommand]
        if config.trainer.enable_progress_bar is not False:
            kwargs.setdefault("callbacks", []).append(RichProgressBar())
        if self.subcommand == "predict":
            self._collector = CollectPredictions()
            kwargs.setdefault("callbacks", []).append(self._collector)
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:  # every DDP process gets here; one line for the user
            return
        callback = self.trainer.checkpoint_callback  # the first one: best by MONITOR
        print(f"best checkpoint: {callback.best_model_path if callback else '(none)'}")

    def after_predict(self) -> None:
        if not self.trainer.is_global_zero:  # every process holds the gathered rows; one writes them
            return
        out = Path(self.config.predict.get("out") or "predictions.jsonl")
        write_predictions(out, self._collector.rows, self.datamodule)
        print(f"wrote {len(self._collector.rows)} predictions to {out}")


def _trainer_defaults() -> dict:
    return {
        "gradient_clip_val": 1.0,
        "log_every_n_steps": 10,
        "callbacks": [
            ModelCheckpoint(
                monitor=MONITOR,
                mode="max",
                auto_insert_metric_name=False,
                filename="best-epoch{epoch:03d}-r1iou05-{val/MR-full-R1@0.5:.2f}",
            ),
            # Without a monitor the newest checkpoint replaces the previous one: last.ckpt, for resuming.
            ModelCheckpoint(filename="last", enable_version_counter=False),
            LearningRateMonitor(logging_interval="step"),
        ],
    }


class CollectPredictions(Callback):
    """Keeps every predict batch's rows; at the end, `rows` holds the whole split's, one per query.

    Under DDP each process predicts a share of the split, padded with repeated queries; the rows of
    all processes are gathered, and `one_row_per_query` puts them in split order, each query once.
    """

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self.rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.rows.extend(outputs)

    def on_predict_end(self, trainer, pl_module) -> None:
        rows = self.rows
        if trainer.world_size > 1:
            shares: list[list[dict] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, rows)
            rows = [row for share in shares for row in share]
        name = trainer.datamodule.hparams.predict_split
        self.rows = one_row_per_query(rows, trainer.datamodule.load(name).qids, name)


def one_row_per_query(rows: list[dict], qids: list[str], split: str) -> list[dict]:
    """The rows of `qids` (split `split`), in that order, keeping the first row of a query predicted twice.

    Raises:
        GroundingInputError: naming the queries of the split without a row, or rows whose qid is not in it.
    """
    by_qid: dict[str, dict] = {}
    for row in rows:
        by_qid.setdefault(row["qid"], row)
    missing = [qid for qid in qids if qid not in by_qid]
    if missing:
        raise GroundingInputError(
            f"split {split!r}: {len(missing)} of {len(qids)} queries have no prediction "
            f"(e.g. {missing[:5]}); a submission needs the whole split "
            "(is --trainer.limit_predict_batches set?)"
        )
    unknown = sorted(set(by_qid) - set(qids))
    if unknown:
        raise GroundingInputError(
            f"split {split!r}: predictions for {len(unknown)} queries not in it (e.g. {unknown[:5]})"
        )
    return [by_qid[qid] for qid in qids]


def run_lightning(argv: list[str]) -> int:
    """fit / validate / test / predict with LightningCLI on `argv` (sys.argv is not read).

    Raises:
        ground.module.StoppingRuleError: a fit without an epoch or step limit.
    """
    GroundCLI(
        GroundingModule,
        GroundingDataModule,
        args=full_data_configs_first(argv),
        trainer_defaults=_trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"default_env": False, "prog": PROG},
    )
    return 0


def full_data_configs_first(argv: list[str]) -> list[str]:
    """Read `--data FILE` as `--config FILE` when FILE is a full config (a data config with its recipe).

    The data configs in ground/configs/data/ hold `data:`, `model:` and `trainer:` sections, so
    `--data ground/configs/data/qvhighlights.yaml` (the README's form) and `--config ...` (the same
    file) mean the same thing. A full config goes first, right after the subcommand, so that every
    other argument overrides it whatever its position; a file of data arguments alone stays `--data`.
    """
    import yaml

    rest: list[str] = []
    configs: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        path = None
        if arg == "--data" and i + 1 < len(argv):
            path, step = argv[i + 1], 2
        elif arg.startswith("--data="):
            path, step = arg.removeprefix("--data="), 1
        if path is not None and path.endswith((".yaml", ".yml")) and Path(path).is_file():
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and "data" in loaded:
                configs += ["--config", path]
                i += step
                continue
        rest.append(arg)
        i += 1
    if not configs:
        return list(argv)
    head = 1 if rest and not rest[0].startswith("-") else 0  # the subcommand (fit, test, ...)
    return rest[:head] + configs + rest[head:]


def write_predictions(path: Path, rows: list[dict], datamodule: GroundingDataModule) -> None:
    """Write predictions in the QVHighlights submission format (one JSON object per line).

    Integer-looking qids are written as ints, as the official files have them; per-feature
    saliency is resampled to the official 2-s clips (mean of the features inside each clip).
    """
    split = datamodule.load(datamodule.hparams.predict_split)
    text_of = dict(zip(split.qids, split.texts, strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            out = {
                "qid": int(row["qid"]) if str(row["qid"]).isdigit() else row["qid"],
                "query": text_of[row["qid"]],
                "vid": row["vid"],
                "pred_relevant_windows": row["pred_relevant_windows"],
            }
            if "pred_saliency_per_feature" in row:
                out["pred_saliency_scores"] = saliency_per_clip(
                    row["pred_saliency_per_feature"], row["feature_timestamps"], clip_sec=2.0
                )
            if "presence" in row:
                out["presence"] = row["presence"]
            f.write(json.dumps(out) + "\n")


def saliency_per_clip(
    per_feature: list[float], timestamps: list[list[float]], clip_sec: float
) -> list[float]:
    """Average per-feature scores into clips of `clip_sec` seconds (by feature centre)."""
    import numpy as np

    ts = np.asarray(timestamps, dtype=np.float64)
    scores = np.asarray(per_feature, dtype=np.float64)
    clip = np.floor(ts.mean(axis=1) / clip_sec).astype(int)
    n = int(np.ceil(ts[-1, 1] / clip_sec - 1e-9))
    sums = np.bincount(clip, weights=scores, minlength=n)[:n]
    counts = np.bincount(clip, minlength=n)[:n]
    filled = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    # A clip with no feature centre inside (features sparser than clips) takes its nearest feature.
    if np.isnan(filled).any():
        centres = (np.arange(n) + 0.5) * clip_sec
        nearest = np.abs(ts.mean(axis=1)[None, :] - centres[:, None]).argmin(axis=1)
        filled = np.where(np.isnan(filled), scores[nearest], filled)
    return [round(float(x), 6) for x in filled]


def _fit(argv: list[str]) -> int:
    """train a network on a cache (LightningCLI: --data DATA.yaml --model MODEL.yaml --trainer.*)"""
    return run_lightning(["fit", *argv])


def _validate(argv: list[str]) -> int:
    """score a checkpoint on the validation split (LightningCLI, --ckpt_path)"""
    return run_lightning(["validate", *argv])


def _test(argv: list[str]) -> int:
    """score a checkpoint or a baseline on the test split (LightningCLI, --ckpt_path)"""
    return run_lightning(["test", *argv])


def _predict(argv: list[str]) -> int:
    """write a QVHighlights-format submission for a split (LightningCLI, --ckpt_path, --out)"""
    return run_lightning(["predict", *argv])


def _eval(argv: list[str]) -> int:
    """official QVHighlights metrics of a submission file against ground truth"""
    from ground.evaluate import main as eval_main

    return eval_main(argv)


def _demo(argv: list[str]) -> int:
    """synthetic videos -> tiny_clip cache -> trained span model -> test metrics beside baselines"""
    from ground.demo import main as demo_main

    return demo_main(argv)


def _zoo(argv: list[str]) -> int:
    """train every registered model on the synthetic cache and write the model-zoo table"""
    from ground.zoo import main as zoo_main

    return zoo_main(argv)


def _export(argv: list[str]) -> int:
    """export a checkpoint's network to ONNX or TorchScript, checked against PyTorch"""
    from ground.export import export_main

    return export_main(argv)


def _report(argv: list[str]) -> int:
    """an HTML report of a checkpoint on a split: metrics beside baselines, figures"""
    from ground.report import report_main

    return report_main(argv)


def _ground_video(argv: list[str]) -> int:
    """answer sentence queries on a video file (or a cached video id) with a checkpoint"""
    from ground.predict import ground_video_main

    return ground_video_main(argv)


def _calibrate_presence(argv: list[str]) -> int:
    """choose a checkpoint's 'not found' threshold on a labelled split"""
    from ground.predict import calibrate_main

    return calibrate_main(argv)


def _bench_coarse_to_fine(argv: list[str]) -> int:
    """measure the boundary error of coarse-to-fine against the coarse pass alone"""
    from ground.predict import bench_coarse_to_fine_main

    return bench_coarse_to_fine_main(argv)


def _serve(argv: list[str]) -> int:
    """serve a checkpoint over HTTP (JSON API and a browser page)"""
    from ground.serve.app import serve_main

    return serve_main(argv)


def _watch(argv: list[str]) -> int:
    """watch a live video (file, URL, device, stdin) for standing queries; events as JSON lines"""
    from ground.watch.watcher import watch_main

    return watch_main(argv)


def _bench_watch(argv: list[str]) -> int:
    """play video files as streams: match rate against ground-video, real-time factor, RSS"""
    from ground.watch.bench import bench_watch_main

    return bench_watch_main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "fit": _fit,
    "validate": _validate,
    "test": _test,
    "predict": _predict,
    "eval": _eval,
    "report": _report,
    "ground-video": _ground_video,
    "calibrate-presence": _calibrate_presence,
    "bench-coarse-to-fine": _bench_coarse_to_fine,
    "serve": _serve,
    "watch": _watch,
    "bench-watch": _bench_watch,
    "export": _export,
    "demo": _demo,
    "zoo": _zoo,
}
"""Sub-commands by name; `python -m ground --help` lists each with its docstring's first line."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command inside the error boundary (`cache_schema.cli.run_commands`).

    A line starting with an option (`--config run.yaml fit ...`) goes to LightningCLI whole.
    """
    description = (
        "Train grounding models on a feature cache, score them, and answer queries.\n"
        "fit/validate/test/predict are LightningCLI commands: `python -m ground fit --help`."
    )
    return run_commands(PROG, description, COMMANDS, argv, default=run_lightning)
