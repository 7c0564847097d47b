"""Annotation adapters: benchmark and custom annotation files -> validated ``Annotation`` rows.

Each adapter is registered by name (``@register_dataset``) and returns an ``AdapterResult``: the
rows plus a ``ValidationReport`` listing every problem found and the action the
``ValidationPolicy`` applied to it. See docs/datasets.md.
"""

from __future__ import annotations

# Importing the adapter modules registers them.
from extract.datasets import activitynet_captions, charades_sta, custom, qvhighlights, tacos  # noqa: F401
from extract.datasets.annotation import Annotation, AnnotationError, RawRecord
from extract.datasets.registry import (
    SHARED_DATA_ENV,
    VIDEO_EXTENSIONS,
    AnnotationFiles,
    Annotations,
    DatasetAdapter,
    annotations_from_strings,
    get_dataset,
    list_datasets,
    load_dataset,
    register_dataset,
    shared_data_dir,
)
from extract.datasets.validation import (
    ACTIONS,
    ALLOWED_ACTIONS,
    PROBLEM_KINDS,
    AdapterResult,
    AnnotationValidationError,
    Problem,
    ValidationPolicy,
    ValidationReport,
    Validator,
    check_duration,
)

__all__ = [
    "ACTIONS",
    "ALLOWED_ACTIONS",
    "PROBLEM_KINDS",
    "SHARED_DATA_ENV",
    "VIDEO_EXTENSIONS",
    "AdapterResult",
    "Annotation",
    "AnnotationError",
    "AnnotationFiles",
    "Annotations",
    "AnnotationValidationError",
    "DatasetAdapter",
    "Problem",
    "RawRecord",
    "ValidationPolicy",
    "ValidationReport",
    "Validator",
    "annotations_from_strings",
    "check_duration",
    "get_dataset",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "shared_data_dir",
]
