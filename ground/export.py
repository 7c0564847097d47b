"""`python -m ground export`: a trained network as ONNX or TorchScript, running on cached features.

    python -m ground export --ckpt runs/.../best.ckpt --format onnx [--out model.onnx] [--opset 17]
    python -m ground export --ckpt runs/.../best.ckpt --format torchscript [--out model.torchscript.pt]

The exported graph is the network's `forward` only: positional tensor inputs (`INPUT_NAMES`, with
dynamic batch B, clip T and token L axes) in, the network's per-clip outputs out, as a tuple in
the order of its forward dict (for `span`: start_logits, end_logits, saliency, presence_logit).
Decoding into windows stays in Python (`net.decode` or `ground.models.blocks.decode_spans`).
A JSON sidecar (`<out>.json`) records the input/output names and shapes, the encoders the
checkpoint was trained on and its hyperparameters. A checkpoint with a visual adapter
(`ground.adapter`) exports its grounding head only; the sidecar's `adapter` entry (and the
command's output) describes the adapted encoder the head's video input must come from.

Every export is checked before it is kept: the saved file is loaded back (ONNX Runtime for
ONNX, `torch.jit.load` for TorchScript) and its outputs are compared with PyTorch's at two sizes
other than the one traced, padding included. A network whose trace does not generalise over
lengths (Python control flow on sizes, packed sequences) fails there with an `ExportError`
naming the model, and no file is left behind.

Which exporters, and why (torch 2.14):

* ONNX uses the TorchScript-based exporter (`dynamo=False`). The default torch.export-based one
  needs `onnxscript` (not a dependency) and cannot trace `span`'s input checks
  (`blocks.check_nonempty` turns a data-dependent `nonzero()` into a Python list). The old
  exporter bakes the sequence length of `nn.MultiheadAttention` into a Reshape
  (pytorch/pytorch#122321, #143107), so for ONNX each attention module is swapped, in a copy of
  the network, for `_OnnxAttention`: the same weights and the same math written with
  `scaled_dot_product_attention`, whose sizes stay symbolic. The comparison with PyTorch checks
  the swap.
* TorchScript uses `torch.jit.trace`, which torch 2.14 marks deprecated (a FutureWarning) but
  still supports; `torch.export` fails on the same input checks as above.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ground.module import GroundingModule, load_checkpoint, require_encoder_record

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = get_args(Format)
INPUT_NAMES = ("video", "video_mask", "timestamps", "duration", "text", "text_mask", "text_pooled")
# Symbolic name of each input dim; an int placeholder "Dv"/"Dt" is filled with the feature size.
INPUT_AXES: dict[str, tuple[str, ...]] = {
    "video": ("B", "T", "Dv"),
    "video_mask": ("B", "T"),
    "timestamps": ("B", "T", "2"),
    "duration": ("B",),
    "text": ("B", "L", "Dt"),
    "text_mask": ("B", "L"),
    "text_pooled": ("B", "Dt"),
}
DEFAULT_OPSET = 17
MIN_OPSET = 14  # scaled_dot_product_attention has an ONNX symbolic from opset 14 on
ATOL = 1e-4
RTOL = 1e-4
# (B, T, L) traced, then (B, T, L) sizes the export is checked at: every one of B, T, L changes,
# each to a different size, so an output axis can be told apart by how it follows them.
TRACE_SIZE = (2, 7, 5)
CHECK_SIZES = ((3, 40, 11), (1, 1, 1))


class ExportError(RuntimeError):
    """A network cannot be exported, or its export does not reproduce PyTorch; names the model."""


# ---------------------------------------------------------------------------------------------
# Loading and example inputs


def load_module(ckpt: str | Path) -> GroundingModule:
    """Load a `GroundingModule` checkpoint on the CPU, in eval mode (`ground.module.load_checkpoint`).

    Raises:
        FileNotFoundError, CheckpointError: as `load_checkpoint`.
        CheckpointError: the checkpoint has no encoder record, so the sidecar could not say which
            features the exported network reads (`Grounder.from_checkpoint` refuses it too).
    """
    module = load_checkpoint(ckpt, device="cpu")
    require_encoder_record(
        module, ckpt, "an export must name the features its network reads, so train it on a cache "
        "with `python -m ground fit`",
    )
    return module


def example_inputs(
    video_dim: int, text_dim: int, batch: int, clips: int, tokens: int, seed: int = 0
) -> tuple[Tensor, ...]:
    """Random inputs in `INPUT_NAMES` order with padding: row 0 full length, the others shorter.

    Clips are 1 s long from 0 s; padding clips get zero timestamps, as a padded batch has them.
    """
    gen = torch.Generator().manual_seed(seed)
    clip_counts = torch.randint(1, clips + 1, (batch,), generator=gen)  # (B,)
    token_counts = torch.randint(1, tokens + 1, (batch,), generator=gen)  # (B,)
    clip_counts[0], token_counts[0] = clips, tokens
    video_mask = torch.arange(clips)[None, :] < clip_counts[:, None]  # (B, T)
    text_mask = torch.arange(tokens)[None, :] < token_counts[:, None]  # (B, L)
    start_sec = torch.arange(clips, dtype=torch.float32).expand(batch, clips)  # (B, T)
    timestamps = torch.stack([start_sec, start_sec + 1.0], dim=-1) * video_mask[..., None]  # (B, T, 2)
    return (
        torch.randn(batch, clips, video_dim, generator=gen),
        video_mask,
        timestamps,
        clip_counts.float(),  # duration_sec: the clips cover the whole video
        torch.randn(batch, tokens, text_dim, generator=gen),
        text_mask,
        torch.randn(batch, text_dim, generator=gen),
    )


# ---------------------------------------------------------------------------------------------
# The exported module


class ExportWrapper(nn.Module):
    """Positional tensors in, the network's forward outputs out as a tuple (the exported graph).

    Networks take the batch dict of `ground.data`; its `qid`/`vid` lists are not tensors, so
    placeholder ids are passed (they only name queries in error messages and pair training
    negatives, which eval mode does not build).

    Args:
        net: a registered grounding network, in eval mode.
        output_names: keys of the forward dict to return, in this order.
    """

    def __init__(self, net: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.net = net
        self.output_names = tuple(output_names)

    def forward(
        self,
        video: Tensor,
        video_mask: Tensor,
        timestamps: Tensor,
        duration: Tensor,
        text: Tensor,
        text_mask: Tensor,
        text_pooled: Tensor,
    ) -> tuple[Tensor, ...]:
        ids = ["exported"] * video.shape[0]
        batch = {
            "video": video,  # (B, T, Dv)
            "video_mask": video_mask,  # (B, T)
            "timestamps": timestamps,  # (B, T, 2)
            "duration": duration,  # (B,)
            "text": text,  # (B, L, Dt)
            "text_mask": text_mask,  # (B, L)
            "text_pooled": text_pooled,  # (B, Dt)
            "qid": ids,
            "vid": ids,
        }
        output = self.net(batch)
        return tuple(output[name] for name in self.output_names)


class _OnnxAttention(nn.Module):
    """`nn.MultiheadAttention.forward` for the TorchScript-based ONNX exporter, on the same weights.

    Torch's own implementation reshapes with sizes the old exporter records as constants, so the
    ONNX graph only runs at the traced length (pytorch/pytorch#122321). This computes the same
    thing (packed in-projection, per-head scaled dot product with the key padding mask, output
    projection) with `scaled_dot_product_attention`, whose sizes stay symbolic. It supports what
    `blocks.MaskedAttention` uses and raises for anything else.
    """

    def __init__(self, attn: nn.MultiheadAttention, where: str) -> None:
        super().__init__()
        unsupported = []
        if not attn.batch_first:
            unsupported.append("batch_first=False")
        if not attn._qkv_same_embed_dim:
            unsupported.append("kdim/vdim different from embed_dim")
        if attn.bias_k is not None or attn.add_zero_attn:
            unsupported.append("bias_k/bias_v or add_zero_attn")
        if unsupported:
            raise ExportError(
                f"{where}: nn.MultiheadAttention with {', '.join(unsupported)} has no ONNX "
                "replacement for dynamic lengths"
            )
        self.attn = attn
        self.where = where

    def __getattr__(self, name: str):
        # nn.TransformerEncoder(Layer) reads the attention's settings (batch_first, in_proj_weight,
        # ...) before calling it; they are the wrapped module's.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("attn"), name)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        """query (B, N, D), key/value (B, M, D), key_padding_mask (B, M): True (or -inf, the float
        form nn.TransformerEncoder passes) on padding."""
        if need_weights or attn_mask is not None or is_causal:
            raise ExportError(
                f"{self.where}: ONNX export supports attention called with need_weights=False, "
                "no attn_mask and is_causal=False"
            )
        if key_padding_mask is not None and not (
            key_padding_mask.dtype == torch.bool or key_padding_mask.is_floating_point()
        ):
            raise ExportError(
                f"{self.where}: ONNX export supports a boolean or additive float key_padding_mask"
            )
        attn = self.attn
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None,) * 3

        def heads(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
            # (B, N, D) -> (B, H, N, D / H)
            return F.linear(x, weight, bias).unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        if key_padding_mask is None:
            allowed = None
        elif key_padding_mask.dtype == torch.bool:
            allowed = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, M) True = attend
        else:
            allowed = key_padding_mask[:, None, None, :].to(q.dtype)  # (B, 1, 1, M) added to the scores
        dropout_p = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=dropout_p
        )  # (B, H, N, D/H)
        return attn.out_proj(out.transpose(1, 2).flatten(2)), None  # (B, N, D)


def _swap_attention_for_onnx(net: nn.Module) -> int:
    """Replace every `nn.MultiheadAttention` of `net` (in place) by `_OnnxAttention`; returns the count."""
    targets = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, attn in targets:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, _OnnxAttention(attn, where=name))
    return len(targets)


# ---------------------------------------------------------------------------------------------
# Export


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Plain attention kernels and no expected-warning noise while tracing.

    The fused "fast path" of nn.MultiheadAttention (eval mode, no grad) is an op neither the ONNX
    exporter nor other TorchScript runtimes know; switching it off traces the same math as
    training. The warnings filtered here are the ones every export raises and that the output
    comparison makes moot: TracerWarnings from the networks' input checks (they run on the
    example and become constants) and the deprecation notices of the exporters chosen above.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings(
                "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            warnings.filterwarnings(
                "ignore", message="The feature will be removed", category=DeprecationWarning
            )
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
            )
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _output_axes(
    name: str, traced: dict[str, Tensor], checked: dict[str, Tensor]
) -> dict[str, tuple[str | int, ...]]:
    """Name each output dim B, T or L by how it follows the inputs between two sizes, else its size."""
    follows = {(TRACE_SIZE[i], CHECK_SIZES[0][i]): axis for i, axis in enumerate(("B", "T", "L"))}
    axes = {}
    for key, value in traced.items():
        dims: list[str | int] = []
        for i, (a, b) in enumerate(zip(value.shape, checked[key].shape, strict=True)):
            if a == b:
                dims.append(int(a))
            elif (a, b) in follows:
                dims.append(follows[(a, b)])
            else:
                raise ExportError(
                    f"model {name!r}: output {key!r} dim {i} is {a} at (B, T, L) = {TRACE_SIZE} and {b} at "
                    f"{CHECK_SIZES[0]}, neither fixed nor one of B, T, L; it cannot be given a dynamic axis"
                )
        axes[key] = tuple(dims)
    return axes


def describe_outputs(
    net: nn.Module, name: str, video_dim: int, text_dim: int
) -> dict[str, tuple[str | int, ...]]:
    """The network's eval-mode outputs, in forward-dict order, with the axes of each.

    Raises:
        ExportError: for a network whose forward returns no tensors (a baseline decodes in Python)
            or returns something other than tensors.
    """
    with torch.no_grad():
        traced = net(_as_batch(example_inputs(video_dim, text_dim, *TRACE_SIZE)))
        checked = net(_as_batch(example_inputs(video_dim, text_dim, *CHECK_SIZES[0], seed=1)))
    if not traced:
        raise ExportError(
            f"model {name!r} has no network to export: its forward returns no tensors and its decode "
            "computes the windows in Python from the batch (a baseline); run it with `python -m ground test`"
        )
    not_tensors = [key for key, value in traced.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ExportError(
            f"model {name!r}: forward outputs {not_tensors} are not tensors and cannot be exported"
        )
    return _output_axes(name, traced, checked)


def _as_batch(inputs: tuple[Tensor, ...]) -> dict:
    ids = ["exported"] * inputs[0].shape[0]
    return {**dict(zip(INPUT_NAMES, inputs, strict=True)), "qid": ids, "vid": ids}


def _compare(
    name: str,
    fmt: str,
    size: tuple[int, int, int],
    names: Sequence[str],
    expected: Sequence[Tensor],
    got: Sequence[np.ndarray],
) -> float:
    """Largest absolute difference over finite entries; raises when outside ATOL/RTOL or not aligned."""
    where = f"model {name!r}: the {fmt} export at (B, T, L) = {size}"
    worst = 0.0
    for key, ref, out in zip(names, expected, got, strict=True):
        ref = ref.detach().float().numpy()
        out = np.asarray(out, dtype=np.float32)
        if ref.shape != out.shape:
            raise ExportError(f"{where} gives {key!r} of shape {out.shape}, PyTorch {ref.shape}")
        finite = np.isfinite(ref)
        if not np.array_equal(finite, np.isfinite(out)) or not np.array_equal(ref[~finite], out[~finite]):
            raise ExportError(f"{where} puts non-finite values of {key!r} (padding) elsewhere than PyTorch")
        diff = np.abs(ref[finite] - out[finite])
        if diff.size and not np.all(diff <= ATOL + RTOL * np.abs(ref[finite])):
            raise ExportError(
                f"{where} differs from PyTorch on {key!r} by up to {diff.max():.3g} "
                f"(atol {ATOL}, rtol {RTOL}): "
                f"the trace at (B, T, L) = {TRACE_SIZE} does not generalise (Python control flow or sizes "
                "fixed while tracing)"
            )
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return worst


def _export_onnx(
    wrapper: ExportWrapper, example: tuple[Tensor, ...], out: Path, axes: dict, opset: int
) -> Callable[[tuple], list]:
    import onnx
    import onnxruntime

    dynamic_axes = {
        key: {i: d for i, d in enumerate(dims) if isinstance(d, str) and d in "BTL"}
        for key, dims in {**INPUT_AXES, **axes}.items()
    }
    torch.onnx.export(
        wrapper,
        example,
        str(out),
        dynamo=False,
        input_names=list(INPUT_NAMES),
        output_names=list(wrapper.output_names),
        dynamic_axes=dynamic_axes,
        opset_version=opset,
    )
    onnx.checker.check_model(str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # The exporter drops inputs the network never reads (span does not read text_pooled).
    used = [i.name for i in session.get_inputs()]

    def run(inputs: tuple) -> list:
        feed = {key: value.numpy() for key, value in zip(INPUT_NAMES, inputs, strict=True) if key in used}
        return session.run(list(wrapper.output_names), feed)

    return run


def _export_torchscript(
    wrapper: ExportWrapper, example: tuple[Tensor, ...], out: Path
) -> Callable[[tuple], list]:
    # export_module's comparison replaces trace's own check (whose message is a raw graph diff).
    traced = torch.jit.trace(wrapper, example, check_trace=False)
    torch.jit.save(traced, str(out))
    loaded = torch.jit.load(str(out), map_location="cpu")

    def run(inputs: tuple) -> list:
        with torch.no_grad():
            return [t.numpy() for t in loaded(*inputs)]

    return run


def _input_names_in_file(fmt: Format, out: Path) -> list[str]:
    if fmt == "onnx":
        import onnx

        return [i.name for i in onnx.load(str(out), load_external_data=False).graph.input]
    return list(INPUT_NAMES)


def max_opset() -> int:
    """The newest ONNX opset torch's TorchScript-based exporter (``dynamo=False``) writes."""
    from torch.onnx import _constants

    return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def check_opset(fmt: Format, opset: int) -> None:
    """Raises ValueError for an ONNX opset below `MIN_OPSET` (the exported attention needs it) or
    above what the exporter writes (`max_opset`)."""
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: the exported attention needs opset {MIN_OPSET} or later")
    if fmt == "onnx" and opset > max_opset():
        raise ValueError(f"--opset {opset}: this torch exports ONNX opsets {MIN_OPSET} to {max_opset()}")


def export_module(module: GroundingModule, out: str | Path, fmt: Format, opset: int = DEFAULT_OPSET) -> dict:
    """Export `module`'s network to `out`, check it against PyTorch, write the sidecar `<out>.json`.

    Args:
        module: a loaded `GroundingModule` (see `load_module`); it is not modified.
        out: file to write.
        fmt: "onnx" or "torchscript".
        opset: ONNX opset (ONNX only), at least `MIN_OPSET`.

    Returns:
        The sidecar record (also written as JSON).

    Raises:
        ExportError: naming the model, when it cannot be exported or its export does not match.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_opset(fmt, opset)
    out = Path(out)
    hp = module.hparams
    name, video_dim, text_dim = hp.name, int(hp.video_dim), int(hp.text_dim)
    refusal = getattr(module.net, "export_refusal", None)
    if refusal:  # a network that knows its trace cannot generalise says why, before any tracing
        raise ExportError(f"model {name!r} cannot be exported to {fmt}: {refusal}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written and verified under another name, then moved onto `out`: a failed export leaves
    # whatever was at `out` (an earlier export, a mistyped checkpoint path) as it was.
    partial = out.with_name(f".{out.name}.partial")
    reference = copy.deepcopy(module.net).eval()
    axes = describe_outputs(reference, name, video_dim, text_dim)
    net = copy.deepcopy(module.net).eval()
    wrapper = ExportWrapper(net, list(axes)).eval()
    example = example_inputs(video_dim, text_dim, *TRACE_SIZE)
    expected_model = ExportWrapper(reference, list(axes)).eval()
    try:
        with _quiet_export():
            if fmt == "onnx":
                _swap_attention_for_onnx(net)
                run = _export_onnx(wrapper, example, partial, axes, opset)
            else:
                run = _export_torchscript(wrapper, example, partial)
            checks = []
            for seed, size in enumerate(CHECK_SIZES, start=1):
                inputs = example_inputs(video_dim, text_dim, *size, seed=seed)
                with torch.no_grad():
                    expected = expected_model(*inputs)
                try:
                    got = run(inputs)
                except Exception as err:  # any runtime failure at a new size means the export is unusable
                    raise ExportError(
                        f"model {name!r}: the {fmt} export fails at (B, T, L) = {size} "
                        f"(traced at {TRACE_SIZE}): {type(err).__name__}: {str(err).strip().splitlines()[0]}"
                    ) from err
                worst = _compare(name, fmt, size, list(axes), expected, got)
                checks.append({"batch": size[0], "clips": size[1], "tokens": size[2], "max_abs_diff": worst})
    except ExportError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as err:  # the exporters raise many unrelated types; re-raised with the model named
        partial.unlink(missing_ok=True)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(
            f"model {name!r} cannot be exported to {fmt}: {type(err).__name__}: {first}"
        ) from err
    os.replace(partial, out)

    sizes = {"Dv": video_dim, "Dt": text_dim, "2": 2}
    record = {
        "format": fmt,
        "file": out.name,
        "model": name,
        "opset": opset if fmt == "onnx" else None,
        "torch_version": torch.__version__,
        "inputs": [
            {
                "name": key,
                "dtype": str(value.dtype).removeprefix("torch."),
                "shape": [sizes.get(d, d) for d in INPUT_AXES[key]],
            }
            for key, value in zip(INPUT_NAMES, example_inputs(video_dim, text_dim, 1, 1, 1), strict=True)
            if key in _input_names_in_file(fmt, out)
        ],
        "outputs": [{"name": key, "shape": list(dims)} for key, dims in axes.items()],
        "decode": (
            "outputs are the network's forward dict in this order; rebuild it as "
            "{name: tensor} and call net.decode(output, batch, k) (for span: "
            "ground.models.blocks.decode_spans on start_logits/end_logits)"
        ),
        "verification": {
            "atol": ATOL,
            "rtol": RTOL,
            "traced_at": dict(zip("BTL", TRACE_SIZE, strict=True)),
            "checks": checks,
        },
        "encoders": module.encoder_record,
        "adapter": describe_adapter(module),
        "hyper_parameters": _plain(dict(hp)),
    }
    sidecar_path(out).write_text(json.dumps(record, indent=2) + "\n")
    return record


def describe_adapter(module: GroundingModule) -> dict | None:
    """What the export leaves out when the checkpoint has a visual adapter (`ground.adapter`), or None.

    The exported graph is the grounding head only: its ``video`` input is the adapted encoder's
    embeddings (the LoRA-adapted last K blocks run on the encoder's block inputs), which the
    export does not compute.
    """
    adapter = module.adapter
    if adapter is None:
        return None
    hp = module.hparams
    return {
        "exported": False,
        "note": (
            f"this file is the grounding head only; its video input columns "
            f"[{adapter.column}, {adapter.column + adapter.dim}) must be encoder {adapter.encoder.name!r} "
            f"with LoRA (rank {hp.adapter_rank}, alpha {hp.adapter_alpha}) on its last "
            f"{adapter.spec.blocks} blocks, as the checkpoint holds it (ground.predict.Grounder applies it)"
        ),
        "encoder": adapter.encoder.to_dict(),
        "block_inputs": adapter.spec.to_dict(),
        "column": adapter.column,
        "lora": {"rank": hp.adapter_rank, "alpha": hp.adapter_alpha, "dropout": hp.adapter_dropout},
    }


def sidecar_path(out: str | Path) -> Path:
    """Where the JSON record of an exported file goes: beside it, `<file>.json`."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def default_output(ckpt: str | Path, fmt: Format) -> Path:
    """`<ckpt stem>.onnx` or `<ckpt stem>.torchscript.pt`, beside the checkpoint."""
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.stem + (".onnx" if fmt == "onnx" else ".torchscript.pt"))


def _plain(value: object) -> object:
    """JSON-ready copy of hyperparameters (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def export_main(argv: list[str] | None = None) -> int:
    """`python -m ground export`; returns the exit code (1 when the network cannot be exported)."""
    parser = argparse.ArgumentParser(
        prog="python -m ground export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="GroundingModule checkpoint (.ckpt)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: beside the checkpoint)")
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET} to {max_opset()} (default {DEFAULT_OPSET})",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out or default_output(args.ckpt, args.format)
    try:
        check_opset(args.format, args.opset)
    except ValueError as err:  # before the checkpoint is loaded
        parser.error(str(err))
    if out.resolve() == args.ckpt.resolve():
        parser.error(f"--out {out} is the checkpoint itself; choose another file")
    module = load_module(args.ckpt)
    try:
        record = export_module(module, out, args.format, opset=args.opset)
    except ExportError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    diffs = ", ".join(
        f"T={c['clips']} L={c['tokens']}: {c['max_abs_diff']:.2g}" for c in record["verification"]["checks"]
    )
    print(f"wrote {out} ({args.format}) and {sidecar_path(out)}")
    print(f"  inputs:  {', '.join(i['name'] for i in record['inputs'])}")
    print(f"  outputs: {', '.join(o['name'] for o in record['outputs'])}")
    print(f"  max |export - PyTorch| ({diffs})")
    if record["adapter"] is not None:
        print(f"  not exported: the visual adapter; {record['adapter']['note']}")
    return 0
