"""Registry of grounding networks, selected by name.

A network registers itself with ``@register_model("name")`` and is built with
``build_model("name", video_dim=..., text_dim=..., **hparams)``; the feature dims come from the
cache, the hyperparameters from ``ground/configs/model/<name>.yaml``. See docs/adding_a_model.md.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ground.errors import ModelConfigError, UnknownModelError
from ground.models.blocks import check_loss_weight

ModelT = TypeVar("ModelT", bound=type[nn.Module])

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[ModelT], ModelT]:
    """Class decorator that makes a network buildable by ``name``.

    Raises:
        ValueError: when ``name`` is already taken by another class.
    """

    def decorator(cls: ModelT) -> ModelT:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__qualname__}")
        _MODELS[name] = cls
        return cls

    return decorator


def list_models() -> list[str]:
    """Names of every registered network, sorted."""
    return sorted(_MODELS)


def trainable_models() -> list[str]:
    """Registered networks trained by gradient descent (baselines set ``trainable = False``)."""
    return [name for name in list_models() if getattr(_MODELS[name], "trainable", True)]


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``.

    Raises:
        UnknownModelError: (a ``KeyError``) for an unknown name; the message lists the available
            ones.
    """
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[name]


def _numbers(value: Any) -> list[Any]:
    """`value` and, inside lists and tuples, every item, flattened."""
    if isinstance(value, (list, tuple)):
        return [item for part in value for item in _numbers(part)]
    return [value]


def check_hyperparameter_values(name: str, hparams: dict[str, Any]) -> None:
    """The checks every network's arguments share, by the registry's naming convention
    (docs/adding_a_model.md), before the constructor runs:

    - no value is NaN (nor any item of a list);
    - ``*_weight`` (a loss weight) is a finite real number >= 0;
    - ``*iou_threshold`` (an NMS threshold) is a real number in [0, 1].

    Raises:
        ModelConfigError: naming the model, the key and the value.
    """
    for key, value in hparams.items():
        if any(isinstance(v, float) and math.isnan(v) for v in _numbers(value)):
            raise ModelConfigError(f"model {name}: {key} is NaN ({value!r})")
        if key.endswith("_weight"):
            try:
                check_loss_weight(name, key, value)
            except ValueError as err:
                raise ModelConfigError(f"model {err}") from err
        real = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key.endswith("iou_threshold") and not (real and 0.0 <= value <= 1.0):
            raise ModelConfigError(f"model {name}: {key} must be a number in [0, 1], got {value!r}")


def build_model(name: str, video_dim: int, text_dim: int, **hparams: Any) -> nn.Module:
    """Build the network registered as ``name`` for the given feature dims.

    Args:
        name: registry name, e.g. ``"span"``.
        video_dim: size of the (concatenated) video features, from the cache.
        text_dim: size of the text token features, from the cache.
        **hparams: constructor arguments (``ground/configs/model/<name>.yaml``, or
            ``--model.hparams.KEY`` on the command line).

    Raises:
        UnknownModelError: (a ``KeyError``) an unknown ``name``.
        ModelConfigError: an argument the constructor does not take, a missing one, a value
            `check_hyperparameter_values` refuses, or one the constructor refuses or cannot
            build a layer from (``ValueError``, ``TypeError``, a division by
            zero, torch's ``RuntimeError`` for a negative size); one line naming the model.
    """
    cls = get_model_class(name)
    kwargs = {"video_dim": video_dim, "text_dim": text_dim, **hparams}
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        known = [p for p in inspect.signature(cls).parameters if p not in ("video_dim", "text_dim")]
        raise ModelConfigError(
            f"model {name}: {err}; its hyperparameters are: {', '.join(known)}"
        ) from err
    check_hyperparameter_values(name, hparams)
    try:
        return cls(**kwargs)
    # A refused value, one of the wrong type, or one torch cannot build a layer from (a zero head
    # count divides by zero, a negative size makes a negative dimension).
    except (TypeError, ValueError, ArithmeticError, RuntimeError, IndexError) as err:
        message = str(err) if str(err).startswith(f"{name}:") else f"{name}: {err}"
        raise ModelConfigError(f"model {message} (hyperparameters {hparams})") from err


# Importing the model modules registers them; keep this list in step with the files in this folder.
from ground.models import baselines, capsule, ianet, localglobal, probe, regress, span  # noqa: E402, F401
