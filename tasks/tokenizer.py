"""Task 3: the run's tokenizer, prepared once in ``<run>/tokenizer/`` (trained on the corpus, or a pretrained one)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from openmind_core.app.tokenizer import prepare_tokenizer
from schemas import CuratedDataset, OpenMindConfig, TokenizerReport
from tasks.common import md_table


@task(name="tokenizer")
def tokenizer_task(cfg: OpenMindConfig, curated: CuratedDataset, run_dir: str) -> TokenizerReport:
    tok = prepare_tokenizer(cfg, curated, run_dir)
    get_run_logger().info("tokenizer %s: %d ids, %s%s", tok.path, tok.vocab_size, tok.source,
                          " (chat template)" if tok.chat_template else "")
    create_markdown_artifact(
        key="week1-tokenizer",
        description="the run's tokenizer",
        markdown="# Tokenizer\n\n" + md_table([
            ("path", f"`{tok.path}`"), ("source", tok.source), ("ids", tok.vocab_size),
            ("image token", f"`{tok.image_token}` = {tok.image_token_id}"), ("pad id", tok.pad_token_id),
            ("chat template", tok.chat_template), ("reused", tok.reused),
        ]),
    )
    return tok
