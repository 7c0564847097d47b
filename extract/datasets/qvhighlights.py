"""QVHighlights (Moment-DETR release): JSON Lines with windows, clip ids and 3-annotator saliency."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from extract.datasets.annotation import AnnotationError, RawRecord
from extract.datasets.parsing import duration, id_field, read_jsonl, text_field, windows_field
from extract.datasets.registry import AnnotationFiles, DatasetAdapter, register_dataset
from extract.datasets.validation import Validator

CLIP_SEC = 2.0
"""QVHighlights saliency is annotated on 2-s clips: clip i covers [2i, 2i + 2) s."""

N_ANNOTATORS = 3
"""Annotators per clip in every QVHighlights release file."""

LABEL_FIELDS = ("relevant_windows", "relevant_clip_ids", "saliency_scores")


@register_dataset("qvhighlights")
class QVHighlights(DatasetAdapter):
    """QVHighlights train / val / test.

    Variants choose the test file: ``test_with_gt`` (default) reads the labelled test released
    after the Codalab shutdown, ``test_release`` the original unlabelled one (same qids, same order).
    Saliency becomes a dense (ceil(duration / 2), 3) array: zeros except at ``relevant_clip_ids``.
    """

    splits = ("train", "val", "test")
    variants = ("test_with_gt", "test_release")
    SOURCE_INFO = """\
QVHighlights (Lei et al., NeurIPS 2021); annotations under CC BY-NC-SA 4.0.
  annotations: https://github.com/jayleicn/moment_detr/tree/main/data
               (test labels: data/highlight_test_with_gt.jsonl, released after the Codalab shutdown)
  videos:      https://nlp.cs.unc.edu/data/jielei/qvh/qvhilights_videos.tar.gz
               (150-s YouTube segments named <youtube_id>_<start>_<end>.mp4)
  features:    Moment-DETR moment_detr_features.tar.gz (8 GB; SlowFast 2304-d and CLIP ViT-B/32 512-d
               per 2-s clip, CLIP text tokens), https://drive.google.com/file/d/1Hiln02F1NEpoW8-iPZurRyi-47-W2_B9/view
               Lighthouse QVHighlights features (clip, clip_text, slowfast, resnet, pann),
               https://drive.google.com/file/d/1-ALnsXkA4csKh71sRndMwybxEDqa-dM4/view"""

    def release_files(self, root: Path, splits: tuple[str, ...]) -> dict[str, Path]:
        names = {split: f"highlight_{split}_release.jsonl" for split in splits}
        if "test" in names:
            names["test"] = f"highlight_{self.variant}.jsonl"
        return {split: root / name for split, name in names.items()}

    def read(self, files: AnnotationFiles, validator: Validator) -> None:
        for split in files.splits:
            path = files.path(split)
            validator.add_file(path)
            # Only the original test file is unlabelled; every other file must carry labels (also
            # when given by path: the variant says which test file it is).
            labels_required = not (split == "test" and self.variant == "test_release")
            for source, record in read_jsonl(path, files.shown(split)):
                validator.add(parse_record(record, split, source, labels_required))


def parse_record(record: dict[str, Any], split: str, source: str, labels_required: bool) -> RawRecord:
    """One QVHighlights line -> RawRecord with dense saliency."""
    qid = id_field(record, "qid", source)
    source_q = f"{source} (qid {qid})"
    duration_sec = duration(record.get("duration"), "duration", source_q)
    present = [f for f in LABEL_FIELDS if f in record]
    if present and len(present) != len(LABEL_FIELDS):
        missing = [f for f in LABEL_FIELDS if f not in record]
        raise AnnotationError(f"{source_q}: has {present} but is missing {missing}")
    if labels_required and not present:
        raise AnnotationError(
            f"{source_q}: missing required field 'relevant_windows' (labelled split {split})"
        )
    raw = RawRecord(
        qid=qid,
        vid=id_field(record, "vid", source_q),
        query=text_field(record, "query", source_q),
        split=split,
        duration_sec=duration_sec,
        windows=[],
        source=source,
        labelled=bool(present),
    )
    if present:
        raw.windows = windows_field(record["relevant_windows"], "relevant_windows", source_q)
        raw.saliency = dense_saliency(
            record["relevant_clip_ids"], record["saliency_scores"], duration_sec, source_q
        )
        raw.saliency_clip_sec = CLIP_SEC
    return raw


def dense_saliency(clip_ids: Any, scores: Any, duration_sec: float, source: str) -> np.ndarray:
    """Scatter the per-relevant-clip scores onto the whole video's 2-s grid.

    Returns:
        (n_clips, n_annotators) float32 with n_clips = ceil(duration / 2); 0 where unmarked.
    """
    if not isinstance(clip_ids, list) or not isinstance(scores, list):
        raise AnnotationError(f"{source}: relevant_clip_ids and saliency_scores must be lists")
    if len(clip_ids) != len(scores):
        raise AnnotationError(
            f"{source}: {len(clip_ids)} relevant_clip_ids but {len(scores)} saliency_scores"
        )
    n_clips = math.ceil(duration_sec / CLIP_SEC)
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_clips for c in clip_ids):
        raise AnnotationError(
            f"{source}: relevant_clip_ids must be ints in [0, {n_clips}) for duration {duration_sec} s, "
            f"got {clip_ids}"
        )
    if len(set(clip_ids)) != len(clip_ids):
        raise AnnotationError(f"{source}: relevant_clip_ids has repeated ids")
    n_annotators = len(scores[0]) if scores else 0
    for i, row in enumerate(scores):
        if not isinstance(row, list) or len(row) != n_annotators or n_annotators == 0:
            raise AnnotationError(
                f"{source}: saliency_scores[{i}] must be a non-empty list as long as the first "
                f"({n_annotators}), got {row!r}"
            )
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in row):
            raise AnnotationError(f"{source}: saliency_scores[{i}] must hold numbers, got {row!r}")
    # A labelled query without relevant clips still gets the full grid; QVHighlights has 3 annotators.
    saliency = np.zeros((n_clips, n_annotators or N_ANNOTATORS), dtype=np.float32)  # (T, A)
    if clip_ids:
        saliency[np.asarray(clip_ids)] = np.asarray(scores, dtype=np.float32)
    return saliency
