"""Task 4: component smoke tests on the configured model; a failure stops the flow and says why."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from openmind_core.app.smoke import raise_if_failed, run_smoke
from schemas import CuratedDataset, OpenMindConfig, SmokeReport, TokenizerReport


@task(name="smoke-test")
def smoke_task(cfg: OpenMindConfig, curated: CuratedDataset, tokenizer: TokenizerReport) -> SmokeReport:
    report = run_smoke(cfg, curated, tokenizer)
    rows = "\n".join(f"| {'PASS' if c.passed else '**FAIL**'} | {c.name} | {c.detail} | {c.seconds:.2f} s |"
                     for c in report.checks)
    create_markdown_artifact(
        key="week1-smoke",
        description="component smoke tests",
        markdown=(f"# Component smoke tests\n\n| | check | detail | time |\n|---|---|---|---|\n{rows}\n\n"
                  f"{report.total_params:,} parameters, {report.trainable_params:,} trainable "
                  f"(stage `{cfg.model.stage}`); {report.image_tokens} image tokens per image."),
    )
    raise_if_failed(report)
    return report
