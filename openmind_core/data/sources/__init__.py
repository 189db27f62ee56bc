"""The download step: every source becomes raw JSONL plus image files under one fingerprint.

``download(cfg, lake)`` writes ``<lake>/raw/<source>/<fingerprint>/`` holding ``captions.jsonl``
and/or ``vqa.jsonl``, the images they reference under ``files/<root>/``, and ``manifest.json``
(written last; row counts and the sha256 of every file).  The fingerprint hashes the source
config and the contents of every input file, so a second download of the same input is a no-op
(``reused=True``) and a changed input gets a new directory beside the old one.

Sources (``cfg.source``):
- ``synthetic``: the seeded shape generator (``synthetic.py``).
- ``jsonl``: the user's files, copied byte for byte (conversion reports their line numbers and
  encodings).  Image paths are relative to the JSONL file or absolute; referenced images are
  copied into the raw directory, paths that escape the JSONL's folder are not (conversion
  quarantines them).  Inline images (base64 / data URIs) stay in the JSONL.
- ``coco``: a captions annotation JSON plus its image folder, the first ``limit`` captions.
- ``hf``: ``datasets.load_dataset`` on a hub id, a local data set directory (``save_to_disk`` or
  data files) or Parquet files, with a column mapping.

One module a source (``generated``, ``jsonl``, ``coco``, ``hf``); ``raw`` holds what they share:
the raw directory's commit, manifest and artifact.
"""

from __future__ import annotations

from pathlib import Path

from schemas.artifacts import RawDataset
from schemas.config import DataConfig

from openmind_core.data.sources import coco, generated, hf, jsonl
from openmind_core.data.sources.raw import CAPTIONS, IMAGE_DIR, VQA, load_raw

__all__ = ["CAPTIONS", "IMAGE_DIR", "VQA", "download", "load_raw"]


def download(cfg: DataConfig, lake: str | Path, seed: int = 0) -> RawDataset:
    """Bring the configured source into ``<lake>/raw/<source>/<fingerprint>/`` (idempotent)."""
    lake = Path(lake)
    fn = {"synthetic": generated.download, "jsonl": jsonl.download, "coco": coco.download, "hf": hf.download}[cfg.source]
    return fn(cfg, lake, seed)
