"""The typed artifacts passed between the Week-1 tasks.

Each is small metadata plus file paths (never tensors or image bytes): Prefect keeps results in
memory, hashes task inputs, and persists these as JSON.  Keep every model at module level so a
persisted result deserialises into the class again.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- download


class RawFile(Artifact):
    path: str
    kind: Literal["caption", "vqa", "conversation", "image", "other"]
    rows: int | None = None
    bytes: int
    sha256: str


class RawDataset(Artifact):
    source: str
    fingerprint: str = Field(description="hash of the source config and input files")
    root: str = Field(description="<lake>/raw/<source>/<fingerprint>")
    manifest: str
    caption_jsonl: str | None = None
    vqa_jsonl: str | None = None
    caption_rows: int = 0
    vqa_rows: int = 0
    conversation_rows: int = 0
    images: int = 0
    files: list[RawFile] = Field(default_factory=list)
    reused: bool = Field(False, description="an identical download was already there")


# --------------------------------------------------------------------------- convert


class CuratedDataset(Artifact):
    version: str = Field(description="content fingerprint of the curated lake version")
    schema_version: int
    root: str = Field(description="<lake>/curated/<version>")
    shards: list[str]
    rows_in: int
    rows_kept: int
    rows_quarantined: int
    quarantine_by_reason: dict[str, int] = Field(default_factory=dict)
    quarantine_path: str | None = None
    splits: dict[str, int] = Field(default_factory=dict, description="rows per split (train, validation)")
    kinds: dict[str, int] = Field(default_factory=dict, description="rows per kind (caption, vqa, conversation)")
    normalised: dict[str, int] = Field(
        default_factory=dict,
        description="file-format normalisations kept, not quarantined: crlf_lines (CRLF line ends), bom_files")
    reused: bool = False

    def normalised_text(self) -> str:
        """'12 CRLF line ends, 1 BOM', or '' when no Windows-written file was read."""
        n = self.normalised
        if not (n.get("crlf_lines") or n.get("bom_files")):
            return ""
        return f"{n.get('crlf_lines', 0)} CRLF line ends, {n.get('bom_files', 0)} BOM"


# --------------------------------------------------------------------------- tokenizer


class TokenizerReport(Artifact):
    """The tokenizer every later stage uses, saved once per run in ``<run>/tokenizer/``."""

    path: str = Field(description="the saved tokenizer directory (<run>/tokenizer)")
    source: str = Field(description="where it came from: 'trained on N texts of the curated corpus', or a hub id / path")
    vocab_size: int = Field(description="ids in the tokenizer, added tokens included")
    image_token: str
    image_token_id: int
    pad_token_id: int | None = None
    chat_template: bool = Field(False, description="prompts go through the tokenizer's own chat template")
    template_date: str | None = Field(None, description="the date a date-dependent chat template renders with "
                                      "(pinned when the run first started; ISO format); None: it reads no date")
    reused: bool = Field(False, description="the run directory already held it (a resume)")


# --------------------------------------------------------------------------- smoke


class Check(Artifact):
    name: str
    passed: bool
    detail: str
    seconds: float = 0.0


class SmokeReport(Artifact):
    checks: list[Check]
    passed: bool
    total_params: int
    trainable_params: int
    image_tokens: int
    tokenizer_dir: str = Field(description="the tokenizer the checks used (the tokenizer stage's path)")


# --------------------------------------------------------------------------- train


class RollbackEvent(Artifact):
    step: int = Field(description="optimizer step at which the spike was detected")
    restored_step: int = Field(description="step of the checkpoint restored")
    reason: str
    loss: float | None = None
    skipped_samples: int = 0
    lr_scale: float = 1.0


class TrainingResult(Artifact):
    run_dir: str
    checkpoints_dir: str
    best_dir: str | None
    final_dir: str
    metrics_path: str
    loss_curve: str | None = None
    steps: int
    epochs_completed: int
    samples_seen: int
    first_loss: float | None
    last_loss: float | None
    first_val_loss: float | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    nan_or_inf_losses: int = 0
    skipped_steps: int = 0
    rollbacks: list[RollbackEvent] = Field(default_factory=list)
    resumed_from_step: int | None = None
    settings_changes: list[dict] = Field(
        default_factory=list, description="train settings a resume changed: each {step, key, old, new}")
    state_restore_checked: bool | None = Field(
        None, description="the newest checkpoint's trainer state loaded back into a fresh trainer state and matched "
        "(step, sampler position, optimizer and scheduler state keys)")
    val_losses: list[float] = Field(default_factory=list, description="every validation loss, in order")
    wall_seconds: float = 0.0
    tokens_per_second: float | None = None
    tokens: int = Field(0, description="real input tokens trained on (image tokens included), all ranks, this process")
    slots: int = Field(0, description="positions computed (padding included), all ranks, this process")
    pad_fraction: float | None = Field(None, description="1 - tokens/slots: the share of computed positions that "
                                       "were padding (None before a step)")
    peak_memory_bytes: int | None = Field(None, description="torch.cuda.max_memory_allocated() on CUDA; None elsewhere")
    device: str = "cpu"
    amp: str = "off"
    checkpoints: list[str] = Field(default_factory=list, description="checkpoint directories kept")
    reload_equal: bool | None = Field(
        None, description="final/ reloaded with from_pretrained gives logits equal to the trained model"
    )
    stage: str | None = Field(None, description="model.stage that ran: align, finetune or full")
    lora: dict | None = Field(None, description="model.lm.lora when the LM trained LoRA adapters (r, alpha, ...)")
    started_from: str | None = Field(
        None, description="model.init_from (the earlier run's final/ whose projector this run started from); "
        "None: a fresh projector")


# --------------------------------------------------------------------------- inference


class Prediction(Artifact):
    kind: Literal["vqa", "caption", "conversation", "prompt"]
    sample_id: str | None = None
    prompt: str
    reference: str | None = None
    references: list[str] = Field(default_factory=list, description="every ground truth scored against "
                                  "(a VQA row's answers, all of an image's captions)")
    prediction: str = Field(description="the answer scored (after a reasoning trace, when the output held one)")
    reasoning: str | None = Field(None, description="the whole output, when it held a reasoning trace "
                                  "(<think>...</think>) before the answer")
    score: float | None = Field(None, description="VQA: the question's accuracy in [0, 1]; caption, conversation: "
                                "its CIDEr-D")
    method: str | None = Field(None, description="VQA scoring that applied: vqav2 (10-answer consensus), "
                               "exact (one answer) or any (2-9 answers)")
    correct: bool | None = Field(None, description="VQA: full credit (score 1)")


class InferenceReport(Artifact):
    model_dir: str
    data: str | None = Field(None, description="what was evaluated, e.g. 'lake <root> validation', 'jsonl FILE'")
    vqa_accuracy: float | None = Field(None, description="VQAv2 accuracy in [0, 1] (see vqa_method)")
    vqa_method: str | None = Field(None, description="which VQA scoring applied and to how many questions")
    vqa_chance: float | None = Field(None, description="the same metric for always giving the most common "
                                     "training answer")
    vqa_chance_answer: str | None = None
    vqa_random: float | None = Field(None, description="the same metric for a random training answer (seeded)")
    vqa_count: int = 0
    nonempty: int = Field(0, description="predictions (VQA and captions) with non-blank text")
    scored: int = Field(0, description="VQA and caption predictions scored")
    caption_cider: float | None = Field(None, description="corpus CIDEr-D (pycocoevalcap), simple tokenizer")
    caption_bleu4: float | None = Field(None, description="corpus BLEU-4 (pycocoevalcap), simple tokenizer")
    caption_chance_cider: float | None = Field(None, description="CIDEr-D of a random training caption per image")
    caption_chance_bleu4: float | None = Field(None, description="BLEU-4 of a random training caption per image")
    caption_tokenizer: str | None = None
    caption_count: int = Field(0, description="images captioned (each against all of its reference captions)")
    conversation_cider: float | None = Field(None, description="corpus CIDEr-D of the answers to conversation "
                                             "rows' last assistant turn, against that turn")
    conversation_bleu4: float | None = None
    conversation_chance_cider: float | None = Field(None, description="the same for the last answer of a random "
                                                    "other training conversation")
    conversation_chance_bleu4: float | None = None
    conversation_count: int = Field(0, description="conversation rows answered and scored")
    conversation_note: str | None = Field(None, description="conversation rows left unscored, and why")
    thinking: bool = Field(False, description="generation prompts let a reasoning template think "
                           "(inference.thinking, or the training answers hold reasoning traces)")
    chance_from: str | None = Field(None, description="the rows the chance baselines were drawn from")
    predictions: list[Prediction] = Field(default_factory=list)
    wall_seconds: float = 0.0


# --------------------------------------------------------------------------- the flow


Status = Literal["pass", "fail", "not measured"]


class Criterion(Artifact):
    name: str
    status: Status
    evidence: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def failed(self) -> bool:
        return self.status == "fail"


class Week1Report(Artifact):
    run_name: str
    run_dir: str
    config_path: str
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    raw: RawDataset
    curated: CuratedDataset
    tokenizer: TokenizerReport | None = Field(None, description="the tokenizer stage (None in reports written before it)")
    smoke: SmokeReport
    training: TrainingResult
    inference: InferenceReport
    criteria: list[Criterion]
    passed: bool = Field(description="no criterion failed (some may be not measured): the exit code is 0")
    counts: dict[str, int] = Field(default_factory=dict, description="criteria per status")
    advice: str | None = Field(None, description="what to change when the run failed only by training too little")
    auto_resumes: list[dict[str, Any]] = Field(
        default_factory=list, description="automatic resumes after a crash since the run's last start by hand "
        "(attempt, max, crashed_flow_run, flow_run, from_step, time): <run>/auto_resumes.jsonl")
