"""The data lake: sources -> raw JSONL + images -> validated, versioned Parquet -> torch datasets.

``download`` (sources/) brings a source into ``<lake>/raw/``; ``convert`` (convert.py) validates
every row into ``<lake>/curated/<version>/`` and ``<lake>/quarantine/<version>/``; ``read_rows``,
``VLMDataset``, ``Collator`` and ``inspect_samples`` (dataset.py) read the lake for training and
inference; ``ResumableSampler`` (sampler.py) keeps an epoch's position checkpointable.
"""

from openmind_core.data.convert import SCHEMA, convert
from openmind_core.data.dataset import Collator, VLMDataset, inspect_samples, read_rows
from openmind_core.data.layout import SCHEMA_VERSION, DataError, HubUnreachableError
from openmind_core.data.sampler import ResumableSampler
from openmind_core.data.sources import download
from openmind_core.data.validate import REASONS

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "REASONS",
    "Collator",
    "DataError",
    "HubUnreachableError",
    "ResumableSampler",
    "VLMDataset",
    "convert",
    "download",
    "inspect_samples",
    "read_rows",
]
