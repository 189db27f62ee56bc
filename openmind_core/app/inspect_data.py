"""``openmind data inspect``: a few decoded samples of the curated lake and one collated batch.

The stage that checks the data pipeline end to end as the model will see it: the model's config
gives the image size, the number of image tokens and the image processor's settings, the data
layer the dataset and the collator.

Each sample shows the whole sequence as the model sees it (chat template included), the image's
tokens once as ``<image xN>`` (a row with several images: ``<image 1 xN>``, ``<image 2 xN>``, ... in their
places; a text-only row says so), its targets (several assistant turns of a
conversation each in its place as ``<target k>``), and its token counts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from schemas.artifacts import CuratedDataset

from openmind_core.data.collate import Collator
from openmind_core.data.curated import curated_root
from openmind_core.data.dataset import VLMDataset
from openmind_core.model.assembly import image_processor_settings
from openmind_core.model.image_tokens import tokens_for_config
from openmind_core.chat_template import has_chat_template
from openmind_core.prompting import IGNORE_INDEX


def inspect_samples(curated: CuratedDataset | str | Path, tokenizer, model_cfg, n: int = 3) -> str:
    """The ``openmind data inspect`` text: ``n`` decoded samples and one collated batch's shapes."""
    image_token = model_cfg.tokenizer.image_token
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {image_token!r} token (model.tokenizer.image_token)")
    n_img = tokens_for_config(model_cfg)
    split = "train"
    args = (tokenizer, model_cfg.vision.img_size, n_img, image_token_id, model_cfg.max_length)
    mean, std, resample, _ = image_processor_settings(model_cfg.vision.pretrained)
    kw = dict(pixel_cache_bytes=0, image_mean=mean, image_std=std, image_resample=resample)
    try:  # a few samples: decode them, build no pixel cache
        ds = VLMDataset(curated, split, *args, **kw)
    except ValueError:
        split = None
        ds = VLMDataset(curated, None, *args, **kw)
    # a mix of kinds (and of one-image and multi-image rows) when there are several
    picks: list[int] = []
    by_kind: dict[tuple[str, bool], list[int]] = {}
    counts = ds.image_counts()
    for i, kind in enumerate(ds.kinds()):
        by_kind.setdefault((kind, bool(counts[i] > 1)), []).append(i)
    while len(picks) < min(n, len(ds)):
        for idx in by_kind.values():
            if idx and len(picks) < n:
                picks.append(idx.pop(0))
    template = "the tokenizer's chat template" if has_chat_template(tokenizer) else "the fixed USER/ASSISTANT template"
    lines = [f"curated lake: {curated_root(curated)}  split: {split or 'all'}  rows: {len(ds)}",
             f"prompts: {template}",
             f"image: {model_cfg.vision.img_size} px -> {n_img} image tokens ({image_token!r} id {image_token_id}); "
             f"max_length {model_cfg.max_length} text tokens", ""]
    items = []
    for k, i in enumerate(picks, 1):
        row, enc, item = ds.row(i), ds.encode_row(i), ds[i]
        items.append(item)
        runs = enc.runs
        start = runs[0][0] if runs else 0
        n_image = sum(b - a for a, b in runs)
        spans = _label_spans(enc.labels)
        targets = [tokenizer.decode(enc.input_ids[a:b]) for a, b in spans]
        pv = item["pixel_values"]
        several = f"{ds.image_count(i)} images, the first " if ds.image_count(i) > 1 else ""
        image = ("none (a text-only row)" if pv is None else
                 f"{several}{row['image_width']}x{row['image_height']} -> pixel_values {tuple(pv.shape)} "
                 f"range [{pv.min():.2f}, {pv.max():.2f}]")
        lines += [f"[{k}] {row['kind']} {row['sample_id']} ({row['source_file']}:{row['source_line']}, {row['language']})",
                  f"    image     {image}"]
        if row["kind"] == "conversation" and row.get("conversation"):
            roles = [t["role"] for t in row["conversation"]]
            lines.append(f"    turns     {len(roles)}: {' '.join(roles)}"
                         f"{' (trailing turns dropped to fit)' if enc.truncated and len(spans) < roles.count('assistant') else ''}")
        # the whole sequence as the model sees it (chat template included), image tokens shown once;
        # with several targets each is shown in its place as <target k>
        shown, pos = "", 0
        marks = [(a, b, f"<image {j} x{b - a}>" if len(runs) > 1 else f"<image x{b - a}>")
                 for j, (a, b) in enumerate(runs, 1)]
        if len(spans) > 1:
            marks += [(a, b, f"<target {j}>") for j, (a, b) in enumerate(spans, 1)]
        else:
            marks += [(a, b, "") for a, b in spans]
        for a, b, label in sorted(marks):
            shown += tokenizer.decode(enc.input_ids[pos:a]) + label
            pos = b
        shown += tokenizer.decode(enc.input_ids[pos:])
        n_target = sum(b - a for a, b in spans)
        lines += [
            f"    prompt    {shown!r}",
            "    target    " + (repr(targets[0]) if len(targets) == 1
                                 else "  ".join(f"<target {j}> {t!r}" for j, t in enumerate(targets, 1))),
            f"    tokens    {len(enc.input_ids)} total = {start} before the image + {n_image} image + "
            f"{len(enc.input_ids) - start - n_image - n_target} other prompt "
            f"+ {n_target} target{' (truncated)' if enc.truncated else ''}",
        ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = Collator(pad)(items)
    lines += ["", "collated batch:"]
    for key, value in batch.items():
        if value is None:
            lines.append(f"    {key:15s} None (every row text-only)")
            continue
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else f"list[{len(value)}]"
        dtype = str(value.dtype).replace("torch.", "") if isinstance(value, torch.Tensor) else "str"
        lines.append(f"    {key:15s} {shape} {dtype}")
    lines.append(f"    label tokens   {int((batch['labels'] != IGNORE_INDEX).sum())} of "
                 f"{int(batch['attention_mask'].sum())} attended")
    return "\n".join(lines)


def _label_spans(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of label (target) tokens."""
    spans, start = [], None
    for i, lab in enumerate(labels + [IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        elif lab == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans
