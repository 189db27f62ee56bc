"""The data lake: sources -> raw JSONL + images -> validated, versioned Parquet -> torch datasets.

``download`` (sources/) brings a source into ``<lake>/raw/``; ``convert`` (convert.py) validates
every row into ``<lake>/curated/<version>/`` and ``<lake>/quarantine/<version>/``
(``parallel_convert.py``: the same, one job per raw file); ``read_rows`` (curated.py) reads the
rows back; ``VLMDataset`` (dataset.py) and ``Collator`` (collate.py) feed training and inference
from the caches under ``<lake>/cache/`` (cache.py, pixels.py, token_cache.py); ``ResumableSampler``
(sampler.py) keeps an epoch's position checkpointable.

Importing this package loads nothing but itself: every name below is imported from its module on
first use, so a conversion (a Dask worker) pays only for pyarrow, the CLI's pre-flight for what it
checks, and only the dataset, the collator and the sampler load torch.
"""

import importlib

# name -> the module that defines it; each is imported on first use (PEP 562), for start-up cost only:
# a module that needs one piece (the CLI's pre-flight reading input stamps, a Dask worker converting
# one file) loads that piece, not pyarrow's conversion machinery or torch
_HOMES = {
    "SCHEMA": "convert", "convert": "convert", "read_rows": "curated", "SCHEMA_VERSION": "layout",
    "DataError": "layout", "HubUnreachableError": "layout", "download": "sources", "REASONS": "validate",
    "VLMDataset": "dataset", "Collator": "collate", "PackingCollator": "packing", "ResumableSampler": "sampler",
}
__all__ = sorted(_HOMES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
