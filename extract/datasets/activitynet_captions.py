"""ActivityNet Captions: ``{vid: {duration, timestamps, sentences}}`` JSON, seconds."""

from __future__ import annotations

from pathlib import Path

from extract.datasets.annotation import AnnotationError, RawRecord
from extract.datasets.parsing import duration, field, read_json_object, windows_field
from extract.datasets.registry import AnnotationFiles, DatasetAdapter, register_dataset
from extract.datasets.validation import Validator

SPLIT_FILES = {
    # 2D-TAN renamed the official val_1 / val_2 to val / test; VSLNet kept the official names.
    "2d-tan": {"train": "2d-tan/train.json", "val_1": "2d-tan/val.json", "val_2": "2d-tan/test.json"},
    "vslnet": {"train": "vslnet/train.json", "val_1": "vslnet/val_1.json", "val_2": "vslnet/val_2.json"},
}


@register_dataset("activitynet_captions")
class ActivityNetCaptions(DatasetAdapter):
    """ActivityNet Captions train / val_1 / val_2.

    Variants pick the copy: ``2d-tan`` (default; original caption text) or ``vslnet`` (same
    durations and timestamps, 28 caption typos fixed). Query ids are ``<split>_<vid>_<i>``: the
    split is part of the id because val_1 and val_2 annotate the same videos.
    """

    splits = ("train", "val_1", "val_2")
    variants = ("2d-tan", "vslnet")
    SOURCE_INFO = """\
ActivityNet Captions (Krishna et al., ICCV 2017) on ActivityNet v1.3 (Heilbron et al., CVPR 2015).
  annotations: https://cs.stanford.edu/people/ranjaykrishna/densevid/ (train, val_1, val_2), copied by
               https://github.com/microsoft/2D-TAN (data/ActivityNet) and https://github.com/IsaacChanghau/VSLNet
  videos:      YouTube ids; http://activity-net.org/download.html (official download and request form),
               files v_<youtube_id>.mp4 (or .mkv / .webm)
  features:    C3D features, http://activity-net.org/challenges/2016/download.html
               Lighthouse ActivityNet features (clip, clip_text, slowfast, resnet),
               https://drive.google.com/file/d/1P2xS998XfbN5nSDeJLBF1m9AaVhipBva/view"""

    def release_files(self, root: Path, splits: tuple[str, ...]) -> dict[str, Path]:
        return {split: root / SPLIT_FILES[self.variant][split] for split in splits}

    def read(self, files: AnnotationFiles, validator: Validator) -> None:
        for split in files.splits:
            path = files.path(split)
            validator.add_file(path)
            shown = files.shown(split)
            for vid, video in read_json_object(path, shown).items():
                for raw in parse_video(vid, video, split, f"{shown}#{vid}"):
                    validator.add(raw)

    def video_candidates(self, vid: str, video: str | None) -> list[str]:
        # Some distributions name the files by the bare YouTube id, without the "v_" prefix.
        names = super().video_candidates(vid, video)
        if vid.startswith("v_"):
            names += super().video_candidates(vid[2:], None)
        return names


def parse_video(vid: str, video: object, split: str, source: str) -> list[RawRecord]:
    """One video's entry -> one RawRecord per (timestamp, sentence) pair."""
    if not isinstance(video, dict):
        raise AnnotationError(f"{source}: expected an object, got {type(video).__name__}")
    duration_sec = duration(field(video, "duration", source), "duration", source)
    windows = windows_field(field(video, "timestamps", source), "timestamps", source)
    sentences = field(video, "sentences", source)
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise AnnotationError(f"{source}: sentences must be a list of strings")
    if len(sentences) != len(windows):
        raise AnnotationError(f"{source}: {len(windows)} timestamps but {len(sentences)} sentences")
    return [
        RawRecord(
            qid=f"{split}_{vid}_{i}",
            vid=vid,
            query=sentence,
            split=split,
            duration_sec=duration_sec,
            windows=[window],
            source=f"{source}[{i}]",
            labelled=True,
        )
        for i, (window, sentence) in enumerate(zip(windows, sentences, strict=True))
    ]
