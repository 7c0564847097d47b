"""The one LightningModule for every grounding network (the network is injected by name).

The module never branches on the model: it calls `net(batch)`, `net.loss(output, batch)` and
`net.decode(output, batch, k)` (docs/architecture.md). With a visual adapter (`adapter="lora"`,
`ground.adapter`), every batch first goes through `video_input`, which replaces the adapted
encoder's cached features by the adapter's embeddings of the batch's block inputs; the network
sees the same batch keys either way. Optimisation is AdamW with linear warmup
and cosine decay per step over the run's total optimizer steps, which the Trainer's epoch or step
limit gives (`check_stopping_rule`); gradient clipping and precision are Trainer settings.
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from cache_schema.errors import GroundcacheError
from cache_schema.spec import BlockInputsSpec, EncoderSpec
from ground.adapter import ADAPTERS, AdapterKind, VisualAdapter, lora_state_keys
from ground.errors import CheckpointError, check_trained_encoders
from ground.metrics import MomentRetrievalMetric, parse_length_buckets
from ground.models import build_model
from ground.models.blocks import Predictions, nms_1d


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; the message names the batch's query ids."""


class StoppingRuleError(GroundcacheError, ValueError):
    """A fit has no epoch or step limit for the learning-rate schedule to span; names the flag to add."""


def check_stopping_rule(max_epochs: int | None, max_steps: int | None) -> None:
    """Raise unless a fit's total optimizer steps are known before it starts.

    The warmup + cosine schedule decays over the run's total steps, so a fit needs a finite
    `max_epochs` or `max_steps` (both: whichever ends first). `max_time` and an `EarlyStopping`
    callback still stop a run sooner, but they cannot say how many steps it will have: alone
    they are refused, as is an unset `max_epochs` (Lightning would pick 1000 epochs and stretch
    the schedule over all of them) and `max_epochs=-1` without `max_steps`. `ground.cli` checks
    the parsed flags, before Lightning fills in its 1000; `configure_optimizers` checks the
    Trainer's limits again for runs built in Python.

    Args:
        max_epochs: the Trainer's `max_epochs` (None: not set; -1: no limit).
        max_steps: the Trainer's `max_steps` (None or -1: no limit).

    Raises:
        StoppingRuleError: naming `--trainer.max_epochs` and `--trainer.max_steps`.
    """
    epochs_bounded = max_epochs is not None and max_epochs >= 0
    steps_bounded = max_steps is not None and max_steps >= 0
    if not (epochs_bounded or steps_bounded):
        raise StoppingRuleError(
            f"fit needs --trainer.max_epochs N or --trainer.max_steps N (got max_epochs={max_epochs}, "
            f"max_steps={max_steps}): the learning-rate schedule decays over the run's total steps. "
            "The data configs under ground/configs/data/ set a measured max_epochs; max_time and "
            "EarlyStopping may still stop the run sooner"
        )


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor at optimizer step `step` (0-based): linear warmup, then cosine.

    Rises linearly to 1 over `warmup_steps`, then decays along a half cosine to `min_lr_ratio`,
    which it reaches at `step == total_steps` (the factor left after the run's last step) and
    keeps after.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def scaled_lr(base_lr: float, batch_size: int, base_batch_size: int = 32) -> float:
    """AdamW learning rate for `batch_size`, from one tuned at `base_batch_size`: the square-root rule.

    Adam's update is normalised by the gradient's second moment, so the learning rate grows with
    the square root of the batch (Malladi et al., "On the SDEs and Scaling Rules for Adaptive
    Gradient Algorithms", NeurIPS 2022), not linearly as for SGD: 4x the batch, 2x the rate.
    A GPU that takes batches of 256 instead of 32 trains `span` with ``scaled_lr(3e-4, 256)``.

    Raises:
        ValueError: a batch size below 1 or a non-positive base rate.
    """
    if batch_size < 1 or base_batch_size < 1 or base_lr <= 0:
        raise ValueError(
            f"scaled_lr: need base_lr > 0 and batch sizes >= 1, "
            f"got {base_lr}, {batch_size}, {base_batch_size}"
        )
    return base_lr * math.sqrt(batch_size / base_batch_size)


def adamw(params, lr: float, *, grad_scaling: bool = False) -> torch.optim.AdamW:
    """AdamW over `params` (tensors or param-group dicts), fused into one kernel per step when it can be.

    torch's fused AdamW (CPU and CUDA) updates every parameter in one pass: on one CPU thread it
    takes about a quarter of the time of the default for-each update (5.5 against 21 ms for
    `span`'s 2.5 M parameters; docs/benchmarks.md). It is not used with `grad_scaling`: a fused
    optimizer unscales gradients inside its step, so Lightning's mixed-precision plugin refuses to
    clip them first. The update is the same arithmetic either way.
    """
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = (
        not grad_scaling
        and bool(tensors)
        and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    )
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


class GroundingModule(L.LightningModule):
    """Trains, validates, tests and predicts with any registered grounding network.

    Args:
        name: registered network name (`ground.models.list_models()`).
        hparams: constructor arguments of the network (see its config under ground/configs/model/).
        video_dim: video feature size; linked from the data module (the cache), never configured.
        text_dim: text feature size; linked from the data module.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_fraction: fraction of the training steps with linear warmup before cosine decay.
        min_lr_ratio: learning rate after the last step, as a fraction of `lr`. The schedule spans the
            run's total optimizer steps (`max_epochs` x batches per epoch, or `max_steps` when that
            ends first); see `check_stopping_rule`.
        top_k: windows decoded per query (R@5 and mAP need at least 5 and up to 10).
        eval_max_clips: videos longer than this many clips are evaluated with sliding windows whose
            predictions are merged (None: whole videos at once).
        length_buckets: ground-truth length buckets reported beside "full", e.g. "short:0:10,middle:10:30".
        adapter: "lora" trains a LoRA adapter on the last K blocks of one video encoder from the
            cache's block inputs (the data module's `block_inputs` names the encoder); None
            trains on the frozen features.
        adapter_rank: LoRA rank r.
        adapter_alpha: LoRA alpha (the update is scaled by alpha / r).
        adapter_dropout: dropout on the LoRA branch's input.
        adapter_checkpointing: recompute the adapted blocks' activations in the backward pass
            (activation checkpointing: less memory, about one more forward pass of time).
        adapter_weights: encoder weights of the adapted blocks; None rebuilds the cache's
            `weights_id` (anything else must have the same id).
        adapter_source: the adapted encoder, its block-input spec and its feature column; linked
            from the data module (`GroundingDataModule.adapter_source`), never configured.
    """

    def __init__(
        self,
        name: str = "span",
        hparams: dict[str, Any] | None = None,
        video_dim: int = 0,
        text_dim: int = 0,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.01,
        top_k: int = 10,
        eval_max_clips: int | None = None,
        length_buckets: str | None = None,
        adapter: AdapterKind | None = None,
        adapter_rank: int = 8,
        adapter_alpha: float = 16.0,
        adapter_dropout: float = 0.0,
        adapter_checkpointing: bool = False,
        adapter_weights: str | None = None,
        adapter_source: dict | None = None,
    ) -> None:
        super().__init__()
        if video_dim <= 0 or text_dim <= 0:
            raise ValueError(
                "video_dim and text_dim come from the cache; build the module through "
                "`python -m ground` or pass the data module's dims"
            )
        self.save_hyperparameters()
        self.net = build_model(name, video_dim=video_dim, text_dim=text_dim, **(hparams or {}))
        self.adapter = self._build_adapter()
        buckets = parse_length_buckets(length_buckets) if length_buckets else ()
        self.val_metric = MomentRetrievalMetric(length_buckets=buckets)
        self.test_metric = MomentRetrievalMetric(length_buckets=buckets)
        self.encoder_record: dict | None = None
        self.lr_schedule: dict | None = None

    def _build_adapter(self) -> VisualAdapter | None:
        hp = self.hparams
        if hp.adapter is None and hp.adapter_source is None:
            return None
        if hp.adapter is None:
            raise ValueError(
                f"--data.block_inputs {hp.adapter_source['encoder']['name']} makes batches carry block "
                f"inputs, which only an adapter uses: add --model.adapter lora, or drop --data.block_inputs"
            )
        if hp.adapter not in ADAPTERS:
            raise ValueError(f"adapter {hp.adapter!r} is not one of {ADAPTERS} (or None)")
        if hp.adapter_source is None:
            raise ValueError(
                f"adapter {hp.adapter!r} trains from cached block inputs: give --data.block_inputs ENCODER "
                "(a video encoder whose block inputs the cache holds)"
            )
        source = hp.adapter_source
        return VisualAdapter(
            EncoderSpec.from_dict(source["encoder"]),
            BlockInputsSpec.from_dict(source["block_inputs"]),
            int(source["column"]),
            rank=hp.adapter_rank,
            alpha=hp.adapter_alpha,
            dropout=hp.adapter_dropout,
            checkpointing=hp.adapter_checkpointing,
            weights=hp.adapter_weights,
        )

    def video_input(self, batch: dict) -> dict:
        """The batch a network sees: with an adapter, its embeddings replace the cached features.

        Raises:
            ValueError: the module has an adapter and the batch carries no ``block_inputs``.
        """
        if self.adapter is None:
            return batch
        if "block_inputs" not in batch:
            raise ValueError(
                f"this model adapts encoder {self.adapter.encoder.name!r} and needs batches with block "
                f"inputs: build the data module with block_inputs={self.adapter.encoder.name!r}"
            )
        return self.adapter.video_input(batch)

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        batch = self.video_input(batch)
        output = self.net(batch)
        losses = self.net.loss(output, batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at step {self.global_step} in the batch of "
                f"queries {batch['qid']}"
            )
        bs = len(batch["qid"])
        self.log("train/loss", loss.detach(), batch_size=bs, prog_bar=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"}, batch_size=bs)
        return loss

    def configure_optimizers(self) -> dict:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
        optimizer = adamw(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            self.hparams.lr,
            # Lightning's mixed-precision plugin ("16-mixed", "bf16-mixed") clips after unscaling,
            # which a fused step would do itself.
            grad_scaling="mixed" in str(self.trainer.precision),
        )
        check_stopping_rule(self.trainer.max_epochs, self.trainer.max_steps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams.warmup_fraction * total)
        # Kept for the checkpoint, so a run can be checked to have spanned its schedule.
        self.lr_schedule = {"total_steps": total, "warmup_steps": warmup}
        floor = self.hparams.min_lr_ratio
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, floor)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation -------------------------------------------------------------------------
    def predict_batch(self, batch: dict) -> Predictions:
        """Decode top-k windows for a batch, sliding over videos longer than `eval_max_clips`."""
        batch = self.video_input(batch)
        limit = self.hparams.eval_max_clips
        if limit is None or batch["video"].shape[1] <= limit:
            return self.net.decode(self.net(batch), batch, self.hparams.top_k)
        return sliding_window_decode(self.net, batch, self.hparams.top_k, limit)

    def _eval_step(self, batch: dict, metric: MomentRetrievalMetric) -> Predictions:
        preds = self.predict_batch(batch)
        labelled = batch["window_mask"].any(dim=1)
        if labelled.any():
            metric.update(
                batch["query_index"][labelled],
                preds.windows[labelled],
                preds.scores[labelled],
                batch["gt_windows"][labelled],
                batch["window_mask"][labelled],
            )
        return preds

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metric)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metric)

    def _log_metric(self, metric: MomentRetrievalMetric, prefix: str) -> None:
        # compute() gathers the states of every process, so all of them must call it or none: a
        # split without labelled queries logs nothing, one process without any still takes part.
        if not self.trainer.strategy.reduce_boolean_decision(metric.update_called, all=False):
            return
        values = metric.compute()  # the same numbers on every process
        # Already equal everywhere: a max across processes keeps them bit for bit, where the default
        # mean (sum, then divide by the world size) could round them with 3 processes.
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, sync_dist=True, reduce_fx="max")
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        preds = self.predict_batch(batch)
        rows = []
        for i, qid in enumerate(batch["qid"]):
            real = preds.window_mask[i]
            windows = preds.windows[i][real].float().cpu().tolist()
            scores = preds.scores[i][real].float().cpu().tolist()
            row = {
                "qid": qid,
                "vid": batch["vid"][i],
                # Unrounded: rounding scores makes near-ties that `ground eval` ranks otherwise than
                # `ground test` did, and rounded windows move IoUs across thresholds.
                "pred_relevant_windows": [[s, e, c] for (s, e), c in zip(windows, scores, strict=True)],
            }
            if preds.saliency is not None:
                n = int(batch["video_mask"][i].sum())
                row["pred_saliency_per_feature"] = preds.saliency[i, :n].float().cpu().tolist()
                row["feature_timestamps"] = batch["timestamps"][i, :n].float().cpu().tolist()
            if preds.presence is not None:
                row["presence"] = float(preds.presence[i])
            rows.append(row)
        return rows

    # -- hooks ------------------------------------------------------------------------------
    def _fit_statistics(self) -> None:
        """Networks estimated from training-set statistics (the baselines) get the train split."""
        fit_statistics = getattr(self.net, "fit_statistics", None)
        datamodule = getattr(self.trainer, "datamodule", None)
        if fit_statistics is not None and datamodule is not None:
            fit_statistics(datamodule.load(datamodule.hparams.train_split))

    def on_fit_start(self) -> None:
        self._remember_encoders()

    def on_train_epoch_start(self) -> None:
        # Networks with epoch-dependent losses (capsule's diversity term) expose set_epoch.
        set_epoch = getattr(self.net, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.current_epoch)

    def on_validation_start(self) -> None:
        self._fit_statistics()

    def on_test_start(self) -> None:
        self._remember_encoders()
        self._fit_statistics()

    def on_predict_start(self) -> None:
        self._fit_statistics()

    def _remember_encoders(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "encoder_record"):
            record = datamodule.encoder_record()
            if self.encoder_record is not None:
                check_trained_encoders(
                    self.trainer.ckpt_path or "(in memory)",
                    self.encoder_record,
                    (self.hparams.video_dim, self.hparams.text_dim),
                    datamodule.cache,
                    record,
                )
            self.encoder_record = record

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain data only, so checkpoints load with torch.load(weights_only=True).
        checkpoint["groundcache"] = {"encoders": self.encoder_record, "lr_schedule": self.lr_schedule}
        if self.adapter is not None:
            # The frozen blocks are rebuilt from the cache's weights_id: only LoRA weights are kept.
            keep = lora_state_keys(self.adapter, "adapter.")
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("adapter.") and k not in keep]:
                del state[key]

    def complete_state_dict(self, state_dict: dict) -> dict:
        """Add the frozen adapter weights a checkpoint leaves out (rebuilt in `__init__`)."""
        if self.adapter is not None:
            for key, value in self.state_dict().items():
                if key.startswith("adapter.") and key not in state_dict:
                    state_dict[key] = value
        return state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`; weights that do not fit raise `CheckpointError` in one line
        (`describe_weight_mismatch`), so `test`/`predict --ckpt_path` answer like `load_checkpoint`.

        Raises:
            CheckpointError: naming the trainer's checkpoint path when there is one.
        """
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            trainer = self._trainer
            path = (trainer.ckpt_path if trainer is not None else None) or "(weights given in memory)"
            raise CheckpointError(path, describe_weight_mismatch(self, state_dict)) from err

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the encoder record; refuse a checkpoint whose encoders differ from the cache's.

        Lightning calls this before it loads the weights, so `test`/`predict --ckpt_path` on a cache
        of other encoders stops here with both encoder sets named, not at a tensor size mismatch.

        Raises:
            EncoderMismatchError: the trainer's data module provides features of other encoders.
        """
        trained = (checkpoint.get("groundcache") or {}).get("encoders")
        if "state_dict" in checkpoint:  # Lightning loads the weights after this hook
            self.complete_state_dict(checkpoint["state_dict"])
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "encoder_record"):
            hparams = {**self.hparams, **checkpoint.get("hyper_parameters", {})}
            check_trained_encoders(
                trainer.ckpt_path or "(in memory)",
                trained,
                (hparams["video_dim"], hparams["text_dim"]),
                datamodule.cache,
                datamodule.encoder_record(),
            )
        self.encoder_record = trained


LIGHTNING_HPARAM_KEYS = frozenset({"_instantiator", "_class_path"})
"""Keys Lightning writes into `hyper_parameters` beside the constructor arguments: LightningCLI
(`python -m ground fit`) records the function it instantiated the module with (`_instantiator`)
and, in subclass mode, the class (`_class_path`). They say how the module was built, not what it is."""


def module_arguments(hparams: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """`GroundingModule` constructor arguments from a checkpoint's saved `hyper_parameters`.

    Every writer is accepted: a plain `Trainer` (`ground demo`, `ground zoo`, tests) saves the
    constructor arguments; LightningCLI (`ground fit`) saves them plus `LIGHTNING_HPARAM_KEYS`.
    Any other key is an error, not dropped: it means the checkpoint was written by another
    module or another version of this one, and its weights would not mean what they say.

    Raises:
        CheckpointError: no hyperparameters, another class, or keys the constructor does not take.
    """
    if not hparams or "name" not in hparams:
        raise CheckpointError(
            path, "no model hyperparameters; was it saved by ground.module.GroundingModule?"
        )
    expected = f"{GroundingModule.__module__}.{GroundingModule.__qualname__}"
    class_path = hparams.get("_class_path", expected)
    if class_path != expected:
        raise CheckpointError(path, f"saved by {class_path}, not by {expected}")
    arguments = {key: value for key, value in hparams.items() if key not in LIGHTNING_HPARAM_KEYS}
    accepted = [name for name in inspect.signature(GroundingModule.__init__).parameters if name != "self"]
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise CheckpointError(
            path, f"hyperparameters {unknown} are not GroundingModule arguments (it takes {accepted})"
        )
    return arguments


def describe_weight_mismatch(module: GroundingModule, state: Mapping[str, Tensor]) -> str:
    """Why a checkpoint's weights do not load into the network its hyperparameters rebuild, in one line.

    Counts the missing, unexpected and differently shaped weights (naming the first of each), and
    names the network arguments the checkpoint does not record: a checkpoint written before an
    argument existed is rebuilt with today's default, which may be another network (for example
    `clip_evidence` or `pooling` in `regress`, added on 2026-11-30).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    parts = [
        f"{len(keys)} {what} (first: {keys[0]})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped))
        if keys
    ]
    name = module.hparams.name
    taken = inspect.signature(type(module.net)).parameters
    recorded = set(module.hparams.get("hparams") or {})
    unrecorded = [p for p in taken if p not in recorded and p not in ("video_dim", "text_dim")]
    hint = (
        f"; the checkpoint does not record {name}'s arguments {unrecorded}, so their current defaults "
        "were used: if it predates them, they may build another network than the one it trained "
        "(retrain, or pass the values it was trained with)"
        if unrecorded
        else ""
    )
    return f"weights do not fit the {name} network its hyperparameters build: {', '.join(parts)}{hint}"


def read_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict:
    """A checkpoint file's contents, read as plain data (`torch.load(weights_only=True)`), with a
    weight mapping under ``state_dict``.

    `load_checkpoint` reads through it, and `python -m ground validate/test/predict/fit --ckpt_path`
    calls it before Lightning does, so a file that is not a checkpoint stops with one line.

    Raises:
        FileNotFoundError: naming the path when there is no such file.
        CheckpointError: the file cannot be read (truncated, not a torch file), holds Python objects
            other than plain data (it would have to run code to load), or is not a dict with a
            ``state_dict`` mapping.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise CheckpointError(path, "is not a file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    # A text file read as an old-style pickle fails in the unpickler with a KeyError or an IndexError.
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        # torch's text spans many lines and advises loading untrusted code; one line instead.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(
                path, f"holds Python objects ({found.group(1)}), not plain data; ground reads "
                "checkpoints with torch.load(weights_only=True) and runs no code from them"
            ) from err
        lines = [line for line in str(err).splitlines() if line.strip() and "weights_only" not in line]
        reason = re.sub(r"\x1b\[[0-9;]*m", "", lines[-1].strip() if lines else type(err).__name__)
        raise CheckpointError(path, f"not a readable checkpoint ({reason})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(path, "no state_dict; was it saved by a Lightning Trainer?")
    if not isinstance(checkpoint["state_dict"], Mapping):
        kind = type(checkpoint["state_dict"]).__name__
        raise CheckpointError(path, f"its state_dict is a {kind}, not a mapping of weight names to tensors")
    return checkpoint


def require_encoder_record(module: GroundingModule, path: str | os.PathLike, why: str) -> dict:
    """The encoder record of a loaded checkpoint, which its consumers (`Grounder`, export) need to
    name the features the network reads.

    Raises:
        CheckpointError: ``no encoder record (...); <why>``, naming `path`.
    """
    if not module.encoder_record:
        raise CheckpointError(path, f"no encoder record (checkpoint['groundcache']['encoders']); {why}")
    return module.encoder_record


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> GroundingModule:
    """Rebuild a `GroundingModule` from a checkpoint, in eval mode on `device`.

    The one loader for every consumer (`Grounder`, ground-video, serve, calibrate-presence,
    export, report) and every writer (`ground fit`, `ground demo`, `ground zoo`). The checkpoint
    holds plain data only, so it is read with `torch.load(weights_only=True)`; the module is
    rebuilt from its saved constructor arguments (`module_arguments`), then its weights and
    encoder record are restored.

    Raises:
        FileNotFoundError: naming the path when there is no such file.
        CheckpointError: the file is not a readable checkpoint, its hyperparameters are not
            GroundingModule's, or its weights do not fit the network they describe.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, device=device)
    arguments = module_arguments(checkpoint.get("hyper_parameters") or {}, path)
    try:
        module = GroundingModule(**arguments)
    except (KeyError, TypeError, ValueError) as err:  # unknown network, or arguments it rejects
        raise CheckpointError(path, f"its hyperparameters do not build a network ({err})") from err
    try:
        module.load_state_dict(module.complete_state_dict(checkpoint["state_dict"]))
    except CheckpointError as err:  # no trainer, so it names no file: this one
        raise CheckpointError(path, err.reason) from err
    module.on_load_checkpoint(checkpoint)
    return module.to(device).eval()


def sliding_window_decode(
    net: torch.nn.Module, batch: dict, k: int, window: int, overlap: float = 0.5
) -> Predictions:
    """Decode long videos chunk by chunk and merge: windows by score with NMS, saliency by averaging.

    Chunks overlap by `overlap` so an event cut by one chunk border lies whole inside the next.
    Span scores are normalised within each chunk, so merged scores compare chunks' best spans.
    """
    t = batch["video"].shape[1]
    stride = max(1, int(window * (1 - overlap)))
    starts = list(range(0, max(1, t - window) + stride, stride))
    starts = sorted({min(s, max(0, t - window)) for s in starts})
    all_windows, all_scores = [], []
    saliency_sum = torch.zeros(batch["video_mask"].shape, device=batch["video"].device)
    saliency_n = torch.zeros_like(saliency_sum)
    has_saliency = False
    presence = []
    per_clip = ("video", "video_mask", "timestamps", "saliency", "saliency_mask")
    for s in starts:
        sub = {key: (value[:, s : s + window] if key in per_clip else value) for key, value in batch.items()}
        alive = sub["video_mask"].any(dim=1)
        if not alive.any():
            continue
        # Samples whose video ended before this chunk get a stand-in clip (their first real one) so
        # every network sees a well-formed sample; their output is dropped below.
        dead = ~alive
        if dead.any():
            for key in ("video", "timestamps"):
                sub[key] = sub[key].clone()
                sub[key][dead, 0] = batch[key][dead, 0]
            sub["video_mask"] = sub["video_mask"].clone()
            sub["video_mask"][dead, 0] = True
        preds = net.decode(net(sub), sub, k)
        scores = torch.where(alive[:, None] & preds.window_mask, preds.scores, float("-inf"))
        all_windows.append(preds.windows)
        all_scores.append(scores)
        if preds.saliency is not None:
            has_saliency = True
            width = preds.saliency.shape[1]
            # Networks mark padding with -inf saliency: select, don't multiply (0 * -inf is NaN).
            real = sub["video_mask"] & alive[:, None]
            saliency_sum[:, s : s + width] += torch.where(real, preds.saliency, 0.0)
            saliency_n[:, s : s + width] += real.float()
        if preds.presence is not None:
            presence.append(torch.where(alive, preds.presence, torch.zeros_like(preds.presence)))
    windows = torch.cat(all_windows, dim=1)  # (B, n_chunks * K, 2)
    scores = torch.cat(all_scores, dim=1)
    out_w, out_s = [], []
    for b in range(len(windows)):
        real = torch.isfinite(scores[b])
        keep = nms_1d(windows[b][real], scores[b][real], iou_threshold=0.7)[:k]
        w, sc = windows[b][real][keep], scores[b][real][keep]
        if len(keep) < k:  # pad with the last window, -inf score, as Predictions documents
            pad = k - len(keep)
            w = torch.cat([w, w[-1:].expand(pad, 2)])
            sc = torch.cat([sc, sc.new_full((pad,), float("-inf"))])
        out_w.append(w)
        out_s.append(sc)
    return Predictions(
        windows=torch.stack(out_w),
        scores=torch.stack(out_s),
        saliency=torch.where(batch["video_mask"], saliency_sum / saliency_n.clamp(min=1), float("-inf"))
        if has_saliency
        else None,
        presence=torch.stack(presence).amax(dim=0) if presence else None,
    )
