"""groundcache's cache contract: the versioned on-disk layout shared by `extract` and `ground`."""

from cache_schema.errors import GroundcacheError
from cache_schema.spec import (
    GROWN_SCHEMA_VERSION,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    BlockInputsSpec,
    CacheReadError,
    EncoderSpec,
    Orientation,
    QueryItem,
    SchemaError,
    SchemaVersionError,
    VideoItem,
)
from cache_schema.store import CacheReader, CacheWriter, SplitArrays, VideoMeta
from cache_schema.validate import inspect, validate

__all__ = [
    "GROWN_SCHEMA_VERSION",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "BlockInputsSpec",
    "CacheReadError",
    "CacheReader",
    "CacheWriter",
    "EncoderSpec",
    "Orientation",
    "GroundcacheError",
    "QueryItem",
    "SchemaError",
    "SchemaVersionError",
    "SplitArrays",
    "VideoItem",
    "VideoMeta",
    "inspect",
    "validate",
]
