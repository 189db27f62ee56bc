"""The data lake: sources -> raw JSONL + images -> validated, versioned Parquet -> torch datasets.

``download`` (sources/) brings a source into ``<lake>/raw/``; ``convert`` (convert.py) validates
every row into ``<lake>/curated/<version>/`` and ``<lake>/quarantine/<version>/``
(``parallel_convert.py``: the same, one job per raw file); ``read_rows`` (curated.py) reads the
rows back; ``VLMDataset`` (dataset.py) and ``Collator`` (collate.py) feed training and inference
from the caches under ``<lake>/cache/`` (cache.py, pixels.py, token_cache.py); ``ResumableSampler``
(sampler.py) keeps an epoch's position checkpointable.

Importing this package loads no torch: ``VLMDataset``, ``Collator`` and ``ResumableSampler`` are
imported on first use, so a conversion (a Dask worker, the CLI's pre-flight) pays only for
pyarrow.
"""

from openmind_core.data.convert import SCHEMA, convert
from openmind_core.data.curated import read_rows
from openmind_core.data.layout import SCHEMA_VERSION, DataError, HubUnreachableError
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
    "read_rows",
]


_ON_FIRST_USE = ("VLMDataset", "Collator", "ResumableSampler")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ON_FIRST_USE))


def __getattr__(name: str):
    # imported here, on first use, for start-up cost only: these three import torch
    if name == "VLMDataset":
        from openmind_core.data.dataset import VLMDataset

        return VLMDataset
    if name == "Collator":
        from openmind_core.data.collate import Collator

        return Collator
    if name == "ResumableSampler":
        from openmind_core.data.sampler import ResumableSampler

        return ResumableSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
