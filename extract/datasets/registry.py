"""Dataset adapter base class and registry (``@register_dataset(name)``, selected by name)."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from extract.datasets.validation import AdapterResult, ValidationPolicy, Validator, VideoResolver

SHARED_DATA_ENV = "GROUNDCACHE_SHARED_DATA"
"""Environment variable overriding the folder that holds ``<dataset>/`` annotation folders."""

REPO_ROOT = Path(__file__).resolve().parents[2]

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
"""Extensions tried, in order, when a video is looked up as ``<video_root>/<vid><ext>``."""


def shared_data_dir() -> Path:
    """``$GROUNDCACHE_SHARED_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


class DatasetAdapter(abc.ABC):
    """Reads one dataset's annotation format into validated ``Annotation`` rows.

    Subclasses set ``splits`` (empty: free split names, taken from the file), ``variants`` (the
    first is the default; e.g. which public copy of a file to read), ``SOURCE_INFO`` and implement
    :meth:`read`.

    Args:
        variant: One of ``variants``; None picks the default.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()
    variants: ClassVar[tuple[str, ...]] = ("default",)
    SOURCE_INFO: ClassVar[str] = ""

    def __init__(self, variant: str | None = None) -> None:
        variant = self.variants[0] if variant is None else variant
        if variant not in self.variants:
            raise ValueError(
                f"dataset {self.name!r}: unknown variant {variant!r}; choose from {self.variants}"
            )
        self.variant = variant

    def default_annotation_dir(self) -> Path:
        """``<shared data>/<dataset name>`` (see :func:`shared_data_dir`)."""
        return shared_data_dir() / self.name

    def select_splits(self, split: str | Sequence[str] | None) -> tuple[str, ...]:
        """Normalise the ``split`` argument; None means every split of the dataset."""
        wanted = self.splits if split is None else (split,) if isinstance(split, str) else tuple(split)
        if self.splits:
            unknown = [s for s in wanted if s not in self.splits]
            if unknown:
                raise ValueError(
                    f"dataset {self.name!r}: unknown split(s) {unknown}; splits are {self.splits}"
                )
        return wanted

    def load(
        self,
        annotations: str | Path | None = None,
        *,
        split: str | Sequence[str] | None = None,
        policy: ValidationPolicy | None = None,
        video_root: str | Path | None = None,
    ) -> AdapterResult:
        """Parse, validate and return the rows of the requested splits with their report.

        Args:
            annotations: Annotation folder (the layout of ``default_annotation_dir()``); None uses
                the default folder.
            split: One split name, several, or None for all.
            policy: Action per problem kind; None uses the defaults.
            video_root: When given, each row's video is looked up there and missing ones reported.

        Raises:
            AnnotationError: A file cannot be parsed (the message names file and line).
            AnnotationValidationError: A problem whose policy is ``error`` was found.
        """
        splits = self.select_splits(split)
        root = Path(annotations) if annotations is not None else self.default_annotation_dir()
        if not root.exists():
            raise FileNotFoundError(f"dataset {self.name!r}: annotations {root} not found")
        validator = Validator(self.name, policy or ValidationPolicy(), self.video_resolver(video_root))
        if len(self.variants) > 1:
            validator.report.notes.append(f"variant {self.variant}")
        self.read(root, splits, validator)
        return validator.finish()

    @abc.abstractmethod
    def read(self, root: Path, splits: tuple[str, ...], validator: Validator) -> None:
        """Parse the files of ``splits`` under ``root``; pass files and raw records to ``validator``."""

    def video_candidates(self, vid: str, video: str | None) -> list[str]:
        """Names tried under the video root: the annotated path, then ``<vid><ext>``."""
        names = [video] if video else []
        return names + [vid + ext for ext in VIDEO_EXTENSIONS]

    def video_resolver(self, video_root: str | Path | None) -> VideoResolver | None:
        """A function finding a row's video under ``video_root`` (None when no root is given)."""
        if video_root is None:
            return None
        root = Path(video_root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset {self.name!r}: video root {root} is not a directory")

        def resolve(vid: str, video: str | None) -> str | None:
            for name in self.video_candidates(vid, video):
                if (root / name).is_file():  # an absolute name ignores the root
                    return name
            return None

        return resolve


_REGISTRY: dict[str, type[DatasetAdapter]] = {}


def register_dataset(name: str) -> Callable[[type[DatasetAdapter]], type[DatasetAdapter]]:
    """Class decorator registering an adapter under ``name``."""

    def decorator(cls: type[DatasetAdapter]) -> type[DatasetAdapter]:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def get_dataset(name: str, variant: str | None = None) -> DatasetAdapter:
    """Build the adapter registered as ``name``; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    return _REGISTRY[name](variant=variant)


def load_dataset(
    name: str,
    annotations: str | Path | None = None,
    *,
    split: str | Sequence[str] | None = None,
    policy: ValidationPolicy | None = None,
    video_root: str | Path | None = None,
    variant: str | None = None,
) -> AdapterResult:
    """``get_dataset(name, variant).load(annotations, split=..., policy=..., video_root=...)``."""
    return get_dataset(name, variant).load(annotations, split=split, policy=policy, video_root=video_root)
