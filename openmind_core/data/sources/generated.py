"""The ``synthetic`` source: the seeded shape generator (``openmind_core.data.synthetic``)."""

from __future__ import annotations

from pathlib import Path

from schemas.artifacts import RawDataset
from schemas.config import DataConfig

from openmind_core.data import synthetic
from openmind_core.data.layout import stable_hash
from openmind_core.data.sources.raw import CAPTIONS, IMAGE_DIR, VQA, commit


def download(cfg: DataConfig, lake: Path, seed: int) -> RawDataset:
    s = cfg.synthetic
    params = {"source": "synthetic", "config": s.model_dump(mode="json"), "seed": seed,
              "generator": synthetic.GENERATOR_VERSION}
    fingerprint = stable_hash(params)

    def build(tmp: Path) -> dict:
        synthetic.generate(tmp, s.num_captions, s.num_vqa, s.image_size, s.language,
                           seed=s.seed * 1_000_003 + seed, image_subdir=IMAGE_DIR)
        return {"image_roots": {CAPTIONS: IMAGE_DIR, VQA: IMAGE_DIR}}

    return commit("synthetic", lake, fingerprint, build)

