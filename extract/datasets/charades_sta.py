"""Charades-STA (2D-TAN copy): ``VID start end##sentence`` text lines, durations from the Charades CSVs."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from extract.datasets.annotation import AnnotationError, RawRecord
from extract.datasets.parsing import open_text, parse_float
from extract.datasets.registry import AnnotationFiles, DatasetAdapter, register_dataset
from extract.datasets.validation import Validator

DURATION_FILES = {"durations_train": "Charades_v1_train.csv", "durations_test": "Charades_v1_test.csv"}
"""Role -> official Charades metadata file; column ``length`` is the video duration in seconds."""


@register_dataset("charades_sta")
class CharadesSTA(DatasetAdapter):
    """Charades-STA train / test.

    The text files carry no duration, so it comes from the ``length`` column of both official
    Charades CSVs (file roles ``durations_train`` and ``durations_test``). Query ids are
    ``<vid>_<k>``, k counting that video's queries in file order.
    Variants: ``2d-tan`` (default, the original train file with its 4 reversed windows) or
    ``vslnet`` (the train file with those 4 lines corrected; the test file is the same).
    """

    splits = ("train", "test")
    variants = ("2d-tan", "vslnet")
    extra_files = tuple(DURATION_FILES)
    SOURCE_INFO = """\
Charades-STA (Gao et al., ICCV 2017) on Charades (Sigurdsson et al., ECCV 2016).
  annotations: https://github.com/jiyanggao/TALL (charades_sta_{train,test}.txt), copied by
               https://github.com/microsoft/2D-TAN (data/Charades-STA, with the Charades CSVs)
  videos:      https://prior.allenai.org/projects/charades
               (Charades_v1_480.zip: https://ai2-public-datasets.s3-us-west-2.amazonaws.com/charades/Charades_v1_480.zip,
               files <vid>.mp4)
  features:    Lighthouse Charades-STA features (clip, clip_text, slowfast, resnet, vgg),
               https://drive.google.com/file/d/1EOeP2A4IMYdotbTlTqDbv5VdvEAgQJl8/view
               I3D features: see https://github.com/IsaacChanghau/VSLNet (README, "Prerequisites")"""

    def release_files(self, root: Path, splits: tuple[str, ...]) -> dict[str, Path]:
        files = {}
        for split in splits:
            if split == "train" and self.variant == "vslnet":
                files[split] = root / "vslnet_variant" / "charades_sta_train.txt"
            else:
                files[split] = root / f"charades_sta_{split}.txt"
        return files | {role: root / name for role, name in DURATION_FILES.items()}

    def read(self, files: AnnotationFiles, validator: Validator) -> None:
        durations = read_durations(files, validator)
        for split in files.splits:
            path = files.path(split)
            validator.add_file(path)
            shown = files.shown(split)
            per_video: Counter[str] = Counter()
            with open_text(path, shown) as f:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    source = f"{shown}:{line_no}"
                    vid, start_sec, end_sec, sentence = parse_line(line, source)
                    validator.add(
                        RawRecord(
                            qid=f"{vid}_{per_video[vid]}",
                            vid=vid,
                            query=sentence,
                            split=split,
                            duration_sec=durations.get(vid),
                            windows=[(start_sec, end_sec)],
                            source=source,
                            labelled=True,
                        )
                    )
                    per_video[vid] += 1


def parse_line(line: str, source: str) -> tuple[str, float, float, str]:
    """``"AO8RW 0.0 6.9##a person ..."`` -> ``("AO8RW", 0.0, 6.9, "a person ...")``."""
    head, sep, sentence = line.rstrip("\r\n").partition("##")
    if not sep:
        raise AnnotationError(f"{source}: expected 'VID START END##SENTENCE', found no '##'")
    parts = head.split()
    if len(parts) != 3:
        raise AnnotationError(f"{source}: expected 'VID START END' before '##', got {head!r}")
    vid, start, end = parts
    return vid, parse_float(start, "start", source), parse_float(end, "end", source), sentence


def read_durations(files: AnnotationFiles, validator: Validator) -> dict[str, float]:
    """Video id -> ``length`` (seconds) from both Charades CSVs."""
    durations: dict[str, float] = {}
    where: dict[str, str] = {}
    for role in DURATION_FILES:
        path = files.path(role)
        validator.add_file(path)
        shown = files.shown(role)
        with open_text(path, shown, newline="") as f:
            reader = csv.DictReader(f)
            for column in ("id", "length"):
                if column not in (reader.fieldnames or []):
                    raise AnnotationError(
                        f"{shown}:1: missing column {column!r} (header {reader.fieldnames})"
                    )
            for row in reader:
                # The CSV has quoted multi-line fields, so the reader's line number is the reliable one.
                source = f"{shown}:{reader.line_num}"
                vid = row["id"]
                length = parse_float(row["length"], f"length of video {vid}", source)
                if length <= 0:
                    raise AnnotationError(f"{source}: video {vid} has non-positive length {length}")
                if vid in durations and durations[vid] != length:
                    raise AnnotationError(
                        f"{source}: video {vid} length {length} differs from {durations[vid]} at {where[vid]}"
                    )
                durations[vid], where[vid] = length, source
    return durations
