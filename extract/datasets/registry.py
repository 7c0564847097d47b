"""Dataset adapter base class and registry (``@register_dataset(name)``, selected by name).

Every adapter reads its files either from a folder in the layout of the public release (the
default: ``<shared data>/<dataset>``) or from explicit paths, one per role: a split name
(``train``, ``val_1``, ...) or one of the adapter's ``extra_files`` (Charades-STA's duration CSVs).
Both forms go through :meth:`DatasetAdapter.locate`, so a renamed copy of a file is read exactly
as the release file.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from extract.datasets.parsing import display_path
from extract.datasets.validation import AdapterResult, ValidationPolicy, Validator, VideoResolver

SHARED_DATA_ENV = "GROUNDCACHE_SHARED_DATA"
"""Environment variable overriding the folder that holds ``<dataset>/`` annotation folders."""

REPO_ROOT = Path(__file__).resolve().parents[2]

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
"""Extensions tried, in order, when a video is looked up as ``<video_root>/<vid><ext>``."""

PathLike = str | os.PathLike[str]
Annotations = str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]] | None
"""What :meth:`DatasetAdapter.load` reads: None (the default folder), a folder in the release
layout (``custom``: a jsonl file or a folder of them), or a mapping role -> file."""


def shared_data_dir() -> Path:
    """``$GROUNDCACHE_SHARED_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def annotations_from_strings(values: Sequence[str]) -> str | dict[str, str]:
    """The command-line form of ``annotations``: one folder (or file), or ``ROLE=PATH`` items.

    ``["data/qvh"]`` -> ``"data/qvh"``; ``["train=a.jsonl", "val=b.jsonl"]`` ->
    ``{"train": "a.jsonl", "val": "b.jsonl"}``. An item is ``ROLE=PATH`` when the text before
    its first ``=`` is not empty and holds no path separator.

    Raises:
        ValueError: No value, several folders, a mix of both forms, a repeated role or an empty path.
    """
    if not values:
        raise ValueError("annotations: give a folder (or file), or ROLE=PATH items such as train=a.jsonl")
    pairs = [split_role(v) for v in values]
    if all(pair is None for pair in pairs):
        if len(values) > 1:
            raise ValueError(
                f"annotations: one folder (or file) or ROLE=PATH items, got several paths {list(values)}"
            )
        return values[0]
    if any(pair is None for pair in pairs):
        raise ValueError(f"annotations: mix of a folder and ROLE=PATH items in {list(values)}; use one form")
    out: dict[str, str] = {}
    for value, pair in zip(values, pairs, strict=True):
        assert pair is not None
        role, path = pair
        if role in out:
            raise ValueError(f"annotations: role {role!r} given twice ({out[role]!r} and {path!r})")
        if not path:
            raise ValueError(f"annotations: {value!r} has an empty path")
        out[role] = path
    return out


def split_role(value: str) -> tuple[str, str] | None:
    """``"train=a.jsonl"`` -> ``("train", "a.jsonl")``; a path (``data/x``) -> None."""
    role, sep, path = value.partition("=")
    if not sep or not role.strip() or "/" in role or os.sep in role:
        return None
    return role.strip(), path


@dataclass(frozen=True)
class AnnotationFiles:
    """The files one load reads, by role, and the splits it reads from them."""

    dataset: str
    paths: Mapping[str, Path]
    """Role -> file: the selected splits, then the adapter's ``extra_files``. For ``custom`` read
    from a folder, the roles are the file names."""
    splits: tuple[str, ...]
    """The selected splits, in read order (empty for ``custom``: every split in its files)."""
    root: Path | None
    """The folder the files were found in (sources are shown relative to it); None for explicit paths."""
    explicit: bool
    """True when the paths were given role by role (a file holds exactly its role's split)."""

    def path(self, role: str) -> Path:
        """The file of ``role``; raises ``FileNotFoundError`` naming the role and path when absent."""
        path = self.paths[role]
        if not path.is_file():
            given = f" (given as {role}=)" if self.explicit else ""
            raise FileNotFoundError(f"{self.dataset}: annotation file {path}{given} not found")
        return path

    def shown(self, role: str) -> str:
        """The file's name in sources (``file:line``): relative to ``root``, else as given."""
        return display_path(self.paths[role], self.root)


class DatasetAdapter(abc.ABC):
    """Reads one dataset's annotation format into validated ``Annotation`` rows.

    Subclasses set ``splits`` (empty: free split names, taken from the file), ``variants`` (the
    first is the default; e.g. which public copy of a file to read), ``extra_files`` (roles of files
    read whatever the split), ``SOURCE_INFO``, and implement :meth:`release_files` and :meth:`read`.

    Args:
        variant: One of ``variants``; None picks the default.

    Raises:
        ValueError: Unknown variant.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()
    variants: ClassVar[tuple[str, ...]] = ("default",)
    extra_files: ClassVar[tuple[str, ...]] = ()
    needs_annotations: ClassVar[bool] = False
    """True when there is no default folder (``custom``): ``annotations`` must be given."""
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

    def file_roles(self) -> tuple[str, ...]:
        """Roles an explicit ``annotations`` mapping may name (empty: any split name)."""
        return self.splits + self.extra_files if self.splits else ()

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

    def explicit_files(
        self, annotations: Mapping[str, PathLike], split: str | Sequence[str] | None = None
    ) -> AnnotationFiles:
        """Check an explicit role -> file mapping (without touching the disk).

        Without ``split`` the splits read are the mapping's; a split asked for must have a file,
        and so must every one of ``extra_files``.

        Raises:
            ValueError: An empty mapping or role, a role the adapter does not know, or a missing one.
        """
        paths = {str(role): Path(path) for role, path in annotations.items()}
        if not paths:
            raise ValueError(f"dataset {self.name!r}: annotations maps no split to a file")
        if any(not role.strip() for role in paths):
            raise ValueError(f"dataset {self.name!r}: annotations has an empty split name")
        roles = self.file_roles()
        unknown = [r for r in paths if roles and r not in roles]
        if unknown:
            raise ValueError(
                f"dataset {self.name!r}: annotations name unknown file role(s) {unknown}; roles are {roles}"
            )
        if split is None:
            order = self.splits or tuple(paths)
            splits = tuple(r for r in order if r in paths and r not in self.extra_files)
        else:
            splits = self.select_splits(split)
        if not splits:
            raise ValueError(
                f"dataset {self.name!r}: annotations give no split file (given: {sorted(paths)})"
            )
        missing = [r for r in splits + self.extra_files if r not in paths]
        if missing:
            raise ValueError(
                f"dataset {self.name!r}: annotations give no file for {missing} "
                f"(given: {sorted(paths)}); add {missing[0]}=PATH"
            )
        chosen = {r: paths[r] for r in splits + self.extra_files}
        return AnnotationFiles(self.name, chosen, splits, root=None, explicit=True)

    def locate(self, annotations: Annotations, split: str | Sequence[str] | None = None) -> AnnotationFiles:
        """The files to read: explicit paths, or the release layout of a folder (default: shared data).

        Raises:
            ValueError: See :meth:`explicit_files`; also no annotations for ``custom``.
            FileNotFoundError: The folder does not exist.
        """
        if isinstance(annotations, Mapping):
            return self.explicit_files(annotations, split)
        if annotations is None and self.needs_annotations:
            raise ValueError(
                f"dataset {self.name!r} has no default annotations: pass the jsonl file "
                "(--annotations FILE, or SPLIT=FILE items)"
            )
        splits = self.select_splits(split)
        root = Path(annotations) if annotations is not None else self.default_annotation_dir()
        if not root.exists():
            raise FileNotFoundError(f"dataset {self.name!r}: annotations {root} not found")
        return AnnotationFiles(
            self.name, self.release_files(root, splits), splits, root if root.is_dir() else root.parent, False
        )

    def load(
        self,
        annotations: Annotations = None,
        *,
        split: str | Sequence[str] | None = None,
        policy: ValidationPolicy | None = None,
        video_root: str | Path | None = None,
        window_duration_checks: bool = True,
    ) -> AdapterResult:
        """Parse, validate and return the rows of the requested splits with their report.

        Args:
            annotations: None for the default folder, a folder in the release layout (``custom``:
                a jsonl file or a folder of them), or a mapping role -> file (``{"train":
                "a.jsonl", ...}``; see :meth:`explicit_files`).
            split: One split name, several, or None for all (explicit paths: all given).
            policy: Action per problem kind; None uses the defaults.
            video_root: When given, each row's video is looked up there and missing ones reported.
            window_duration_checks: Check windows against the annotated duration. False leaves
                them as annotated for a caller that checks them against the decoded duration (the
                extract pipeline), so that nothing is clipped to a duration the cache will not hold.

        Raises:
            AnnotationError: A file cannot be parsed (the message names file and line).
            AnnotationValidationError: A problem whose policy is ``error`` was found.
            FileNotFoundError: A folder or file is missing.
            ValueError: Unknown split or role, or no annotations for ``custom``.
        """
        files = self.locate(annotations, split)
        validator = Validator(
            self.name,
            policy or ValidationPolicy(),
            self.video_resolver(video_root),
            window_duration_checks=window_duration_checks,
        )
        if len(self.variants) > 1:
            validator.report.notes.append(f"variant {self.variant}")
        if not window_duration_checks:
            validator.report.notes.append("windows are checked against the decoded durations later")
        self.read(files, validator)
        return validator.finish()

    @abc.abstractmethod
    def release_files(self, root: Path, splits: tuple[str, ...]) -> dict[str, Path]:
        """Role -> file in the release layout under ``root``, for ``splits`` and ``extra_files``."""

    @abc.abstractmethod
    def read(self, files: AnnotationFiles, validator: Validator) -> None:
        """Parse ``files`` (the splits in ``files.splits``); pass files and raw records to ``validator``."""

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
    """Build the adapter registered as ``name``.

    Raises:
        ValueError: An unknown name (the message lists the registered ones) or variant.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    return _REGISTRY[name](variant=variant)


def load_dataset(
    name: str,
    annotations: Annotations = None,
    *,
    split: str | Sequence[str] | None = None,
    policy: ValidationPolicy | None = None,
    video_root: str | Path | None = None,
    variant: str | None = None,
    window_duration_checks: bool = True,
) -> AdapterResult:
    """``get_dataset(name, variant).load(annotations, ...)``; see :meth:`DatasetAdapter.load`."""
    return get_dataset(name, variant).load(
        annotations,
        split=split,
        policy=policy,
        video_root=video_root,
        window_duration_checks=window_duration_checks,
    )
