"""TACoS (2D-TAN split): ``{"<vid>.avi": {timestamps, sentences, fps, num_frames}}``, times in frames."""

from __future__ import annotations

from pathlib import Path

from extract.datasets.annotation import AnnotationError, RawRecord
from extract.datasets.parsing import duration, field, number, read_json_object, windows_field
from extract.datasets.registry import VIDEO_EXTENSIONS, AnnotationFiles, DatasetAdapter, register_dataset
from extract.datasets.validation import Validator


@register_dataset("tacos")
class TACoS(DatasetAdapter):
    """TACoS train / val / test as split by 2D-TAN.

    Timestamps are frame indices: seconds = frame / fps and duration = num_frames / fps, with the
    fps stored per video (29.4 for all). The key ``s30-d52.avi`` gives vid ``s30-d52`` and video
    ``s30-d52.avi``; query ids are ``<vid>_<i>`` (the ids of the Lighthouse jsonl).
    """

    splits = ("train", "val", "test")
    SOURCE_INFO = """\
TACoS (Regneri et al., TACL 2013) on MPII Cooking Composite Activities (Rohrbach et al., ECCV 2012).
  annotations: https://github.com/microsoft/2D-TAN (data/TACoS/{train,val,test}.json; identical in VSLNet)
  videos:      https://www.mpi-inf.mpg.de/departments/computer-vision-and-machine-learning/research/vision-and-language/tacos-multi-level-corpus
               (files <vid>.avi, 29.4 fps)
  features:    Lighthouse TACoS features (clip, clip_text, slowfast, resnet, meta),
               https://drive.google.com/file/d/1rYzme9JNAk3niH1K81wgT13pOMn005jb/view
               C3D features: see https://github.com/microsoft/2D-TAN (README, "Prepare data")"""

    def release_files(self, root: Path, splits: tuple[str, ...]) -> dict[str, Path]:
        return {split: root / f"{split}.json" for split in splits}

    def read(self, files: AnnotationFiles, validator: Validator) -> None:
        for split in files.splits:
            path = files.path(split)
            validator.add_file(path)
            shown = files.shown(split)
            for key, video in read_json_object(path, shown).items():
                for raw in parse_video(key, video, split, f"{shown}#{key}"):
                    validator.add(raw)


def parse_video(key: str, video: object, split: str, source: str) -> list[RawRecord]:
    """One video's entry -> one RawRecord per sentence, frames converted to seconds."""
    if not isinstance(video, dict):
        raise AnnotationError(f"{source}: expected an object, got {type(video).__name__}")
    fps = duration(field(video, "fps", source), "fps", source)
    num_frames = number(field(video, "num_frames", source), "num_frames", source)
    if num_frames <= 0 or num_frames != int(num_frames):
        raise AnnotationError(f"{source}: num_frames must be a positive integer, got {video['num_frames']!r}")
    windows = windows_field(field(video, "timestamps", source), "timestamps", source, scale=fps)
    sentences = field(video, "sentences", source)
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise AnnotationError(f"{source}: sentences must be a list of strings")
    if len(sentences) != len(windows):
        raise AnnotationError(f"{source}: {len(windows)} timestamps but {len(sentences)} sentences")
    stem, suffix = Path(key).stem, Path(key).suffix
    vid, file_name = (stem, key) if suffix.lower() in VIDEO_EXTENSIONS else (key, None)
    return [
        RawRecord(
            qid=f"{vid}_{i}",
            vid=vid,
            query=sentence,
            split=split,
            duration_sec=num_frames / fps,
            windows=[window],
            source=f"{source}[{i}]",
            labelled=True,
            video=file_name,
        )
        for i, (window, sentence) in enumerate(zip(windows, sentences, strict=True))
    ]
