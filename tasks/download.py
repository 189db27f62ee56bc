"""Task 1: download (or generate) the raw data into ``<lake>/raw/<source>/<fingerprint>/``."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from openmind_core.data import download
from schemas import DataConfig, RawDataset
from tasks.common import CACHED, md_table, retrying
from openmind_core.data.inputs import check_input_files


@task(name="download", **retrying(3), **CACHED)
def download_task(data: DataConfig, lake: str, seed: int = 0, input_stamp: str = "") -> RawDataset:
    """``input_stamp`` (size and mtime of the user's input files) is only there for the cache key."""
    log = get_run_logger()
    check_input_files(data)  # a directory, a missing or unreadable file: fails at once, no retry
    raw = download(data, Path(lake), seed=seed)
    log.info("raw %s: %d caption rows, %d VQA rows, %d conversation rows, %d images at %s%s", raw.source,
             raw.caption_rows, raw.vqa_rows, raw.conversation_rows, raw.images, raw.root,
             " (reused)" if raw.reused else "")
    create_markdown_artifact(
        key="week1-download",
        description="raw data",
        markdown="# Download\n\n" + md_table([
            ("source", raw.source), ("fingerprint", f"`{raw.fingerprint}`"), ("caption rows", raw.caption_rows),
            ("VQA rows", raw.vqa_rows), ("conversation rows", raw.conversation_rows), ("images", raw.images), ("root", f"`{raw.root}`"), ("reused", raw.reused),
        ]),
    )
    return raw
