"""Benchmark: building the model from local pretrained parts, and loading a saved ``final/``: time and peak RSS.

Setup (not measured, in its own interpreter): a byte-level BPE tokenizer of 32,000 tokens without
our image token (as Llama's ships), a Llama LM sized to it (hidden 1024, 16 layers, MLP 2816, GQA
16/8 heads: ~254 M parameters) and a SigLIP vision tower (384 px / patch 14, width 768, 12 layers,
no pooling head: ~86 M), both saved with ``save_pretrained`` in bf16 as real checkpoints ship;
then the model built from them once and written with ``MultimodalReasoningModel.save_pretrained``
(the ``final/`` a training run leaves).  ``--quick``: a ~4 M parameter version of the same.

Measured, each in a fresh interpreter: the wall time of the call and its peak resident memory
(``ru_maxrss``) above the resident memory just before it -- after the imports (torch, safetensors,
transformers' Llama and SigLIP modules, ``openmind_core``), the config and the tokenizer, with
the imports' own transient peak forgotten (Linux ``/proc/self/clear_refs``) and glibc's free heap
given back -- so the interpreter's and the libraries' memory is not counted:

1. build from pretrained parts: ``openmind_core.app.train.build_model(cfg, tokenizer)`` with
   ``model.lm.name_or_path``, ``model.tokenizer.name_or_path`` and ``model.vision.pretrained``
   pointing at the parts, ``model.dtype=bfloat16``, stage ``align``;
2. load final/: ``MultimodalReasoningModel.from_pretrained(final)`` (with ``dtype=torch.bfloat16``
   when its signature takes one).

Both end by touching every page of the model's parameters and buffers (as a first forward would),
so weights left on a lazy mmap of the checkpoint count as they will in use.  Baseline of each, in
the same run and its own fresh interpreter: the raw cost of reading the same safetensors files,
``safetensors.torch.load_file`` then every page of every tensor touched (load_file maps the file
lazily), which peaks at 1.0x the weights' bytes.  "Weights' bytes": the sum of the files' tensor
bytes (from their headers).  Goal: peak RSS <= 1.3x the weights' bytes; the time over the raw
read's is reported (the raw read is page faults only, so expect a large time ratio).

    python bench/bench_build.py            # ~340 M parameters: about 2 minutes on 2 cores, ~2 GB
    python bench/bench_build.py --quick    # ~4 M parameters: ~15 s
    python -m bench build --repeats 1      # through the harness (writes bench/results/latest.json)

``--quick`` makes the parts and measures all four in one interpreter, one after the other (each
from the peak reset to the resident memory before it): well-formed rows in seconds, numbers not
meaningful at that size.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOAL = 1.3  # peak RSS over the weights' bytes

# sizes of the "pretrained" parts: full, and --quick
SIZES = {
    False: dict(vocab=32_000, corpus_texts=20_000, lm=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                                                          num_attention_heads=16, num_key_value_heads=8),
                vision=dict(image_size=384, patch_size=14, hidden_size=768, intermediate_size=3072,
                            num_hidden_layers=12, num_attention_heads=12)),
    True: dict(vocab=400, corpus_texts=300, lm=dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                                   num_attention_heads=4, num_key_value_heads=2),
               vision=dict(image_size=112, patch_size=16, hidden_size=128, intermediate_size=512,
                           num_hidden_layers=2, num_attention_heads=2)),
}


# --------------------------------------------------------------------------- helpers


def weight_bytes(path: Path) -> int:
    """The tensor bytes of a safetensors file, from its header (no tensor is read)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")


def safetensors_files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in Path(d).glob("*.safetensors"))


def overrides(root: Path, quick: bool) -> list[str]:
    """The config that builds the model from the parts under ``root``."""
    v = SIZES[quick]["vision"]
    return [f"model.lm.name_or_path={root / 'lm'}", f"model.tokenizer.name_or_path={root / 'lm'}",
            f"model.vision.pretrained={root / 'siglip'}",
            f"model.vision.img_size={v['image_size']}", f"model.vision.patch_size={v['patch_size']}",
            f"model.vision.embed_dim={v['hidden_size']}", f"model.vision.depth={v['num_hidden_layers']}",
            f"model.vision.num_heads={v['num_attention_heads']}", f"model.vision.mlp_dim={v['intermediate_size']}",
            "model.vision.feature_layer=-1",  # keep every layer of the file: the weights read are the weights kept
            "model.dtype=bfloat16", "model.stage=align", "model.gradient_checkpointing=false"]


def _corpus(n: int) -> list[str]:
    import random

    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "ee")]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(max(200, 3 * n))]
    return [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n)]


def make_parts(root: Path, quick: bool) -> None:
    """Write ``root/lm`` (LM + tokenizer), ``root/siglip`` and ``root/final`` (the built model, saved)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from openmind_core.model import build_tokenizer, train_bpe_tokenizer
    from openmind_core.app.train import build_model
    from schemas.loading import load_config

    size = SIZES[quick]
    # a "pretrained" tokenizer without our <image> token: building adds it and grows the embeddings
    tok = train_bpe_tokenizer(_corpus(size["corpus_texts"]), size["vocab"], image_token="<img_placeholder>")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=False,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id, **size["lm"]))
    lm.to(torch.bfloat16).save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    del lm
    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                                                  vision_use_head=False, **size["vision"]))
    siglip.to(torch.bfloat16).save_pretrained(root / "siglip")
    del siglip
    cfg = load_config(None, overrides(root, quick))
    build_model(cfg, build_tokenizer(cfg.model.tokenizer)).save_pretrained(root / "final")


# --------------------------------------------------------------------------- the measuring interpreter


def _rss_now() -> int:
    """Resident bytes now (Linux); elsewhere the peak so far."""
    import resource

    try:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _reset_peak() -> bool:
    """Linux: make the peak (``ru_maxrss``, VmHWM) the resident size now, forgetting the imports' transient peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """glibc: give the heap's free memory back to the system, so a measurement cannot hide in what an
    earlier step (imports; in ``--quick`` the setup and the other measurements) left free."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _imports() -> None:
    """What a measuring interpreter loads before its baseline: torch, safetensors, transformers' two
    model families (transformers imports them lazily), openmind_core; plus torch's first-op costs."""
    import torch
    import safetensors.torch  # noqa: F401
    from transformers import LlamaForCausalLM, SiglipVisionModel  # noqa: F401

    import openmind_core.model  # noqa: F401
    import openmind_core.app.train  # noqa: F401
    import schemas.config  # noqa: F401

    torch.nn.Linear(8, 8)(torch.ones(2, 8)).sum()


def _touch(tensors) -> int:
    """Read one byte of every page of every CPU tensor: weights on a lazy mmap (safetensors'
    ``load_file``; transformers keeps a checkpoint's tensors mapped when no conversion is needed)
    come into memory, as a first forward would bring them."""
    import torch

    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    return sum(int(t.detach().reshape(-1).view(torch.uint8)[::page].sum()) for t in tensors
               if t.device.type == "cpu" and t.numel())


def _op(mode: str, arg: dict, info: dict):
    """The call to measure (returned as a function), after its untimed preparation."""
    import torch

    if mode == "raw":
        from safetensors.torch import load_file

        def op():
            tensors = [load_file(str(p)) for p in safetensors_files(*map(Path, arg["dirs"]))]
            info["checksum"] = _touch(t for sd in tensors for t in sd.values())
            return tensors
        return op
    import inspect

    import openmind_core.app.train
    from openmind_core.model import MultimodalReasoningModel, build_tokenizer
    from schemas.loading import load_config

    if mode == "build":
        cfg = load_config(None, arg["overrides"])
        tokenizer = build_tokenizer(cfg.model.tokenizer)  # the tokenizer is not part of the build
        return lambda: _touched(openmind_core.app.train.build_model(cfg, tokenizer), info)
    if mode == "final":
        kwargs = {}
        if "dtype" in inspect.signature(MultimodalReasoningModel.from_pretrained).parameters:
            kwargs["dtype"] = torch.bfloat16
        info["from_pretrained_kwargs"] = sorted(kwargs)
        return lambda: _touched(MultimodalReasoningModel.from_pretrained(arg["dir"], **kwargs), info)
    raise SystemExit(f"bench_build: unknown measurement {mode!r}")


def _touched(model, info: dict):
    """The model, every page of its tensors touched; ``lazy_bytes``: what that brought into memory."""
    before = _rss_now()
    info["checksum"] = _touch([*model.parameters(), *model.buffers()])
    info["lazy_bytes"] = _rss_now() - before
    return model


def measure_one(mode: str, arg: dict) -> dict:
    """Time and peak resident memory of one call, above the resident memory just before it."""
    import gc

    info: dict = {}
    op = _op(mode, arg, info)
    gc.collect()
    _trim()
    info["peak_reset"] = _reset_peak()
    before = _rss_now()
    t0 = time.perf_counter()
    out = op()
    seconds = time.perf_counter() - t0
    peak = _peak()
    gc.collect()
    after = _rss_now()
    if mode != "raw":
        params = list(out.parameters()) + list(out.buffers())
        info["param_bytes"] = sum(p.numel() * p.element_size() for p in out.parameters())
        info["params"] = sum(p.numel() for p in out.parameters())
        info["dtypes"] = sorted({str(p.dtype).removeprefix("torch.") for p in out.parameters()})
        info["devices"] = sorted({p.device.type for p in params})
    del out
    gc.collect()
    return {"mode": mode, "seconds": seconds, "before": before, "peak": peak, "after": after, **info}


def worker(spec: dict) -> list[dict]:
    """``python -m bench.bench_build --worker JSON``: optionally make the parts, then measure each job in turn."""
    if spec.get("setup"):
        make_parts(Path(spec["setup"]), spec.get("quick", False))
    if not spec.get("jobs"):
        return []
    _imports()
    return [measure_one(mode, arg) for mode, arg in spec["jobs"]]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_worker(spec: dict) -> list[dict]:
    """``worker(spec)`` in a fresh interpreter."""
    cmd = [sys.executable, "-m", "bench.bench_build", "--worker", json.dumps(spec)]
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    if p.returncode != 0:
        what = [m for m, _ in spec.get("jobs", [])] or ["setup"]
        raise RuntimeError(f"bench_build worker {what} failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the benchmark

_PARTS: dict[bool, Path] = {}  # made once per process and size (the harness calls run() several times)


def measure(quick: bool = False) -> dict:
    """Every measurement: {'build': ..., 'build_raw': ..., 'final': ..., 'final_raw': ...} (bytes, seconds).

    Full size: the parts are made in one interpreter (once per process), then each measurement runs
    in a fresh one.  ``quick``: one interpreter makes the tiny parts and then measures all four in
    turn, each from the peak reset to the resident memory before it (seconds instead of a minute).
    """
    root = None if quick else _PARTS.get(quick)  # the full-size parts are made once per process
    if root is None or not (root / "final").is_dir():
        root = Path(tempfile.mkdtemp(prefix=f"bench-build-{'quick-' if quick else ''}"))
        if not quick:
            atexit.register(shutil.rmtree, root, True)
            run_worker({"setup": str(root), "quick": False, "jobs": []})
            _PARTS[quick] = root
    part_dirs, final_dir = [root / "lm", root / "siglip"], root / "final"
    jobs = {"build": ("build", {"overrides": overrides(root, quick)}),
            "build_raw": ("raw", {"dirs": [str(d) for d in part_dirs]}),
            "final": ("final", {"dir": str(final_dir)}),
            "final_raw": ("raw", {"dirs": [str(final_dir)]})}
    try:
        if quick:
            results = dict(zip(jobs, run_worker({"setup": str(root), "quick": True, "jobs": list(jobs.values())})))
        else:
            results = {name: run_worker({"jobs": [job]})[0] for name, job in jobs.items()}
        weights = {"build": sum(map(weight_bytes, safetensors_files(*part_dirs))),
                   "final": sum(map(weight_bytes, safetensors_files(final_dir)))}
    finally:
        if quick:
            shutil.rmtree(root, ignore_errors=True)
    for name, r in results.items():
        r["weights"] = weights[name.removesuffix("_raw")]
        r["extra"] = max(0, r["peak"] - r["before"])
    return {"quick": quick, **results}


def rows(m: dict) -> list[dict]:
    """The harness's rows: for each scenario, peak RSS over the weights' bytes, and time over the raw read."""
    out = []
    what = {"build": "build from pretrained parts", "final": "load final/"}
    for key, name in what.items():
        ours, raw = m[key], m[f"{key}_raw"]
        w = ours["weights"]
        kept = f"{ours['params'] / 1e6:.1f} M params ({', '.join(ours['dtypes'])}; {ours['param_bytes'] / 1e6:.0f} MB)"
        quick = "--quick, one interpreter for all four: not meaningful; " if m["quick"] else ""
        out.append(dict(
            name=f"{name}: peak RSS", ours_s=ours["extra"] / 1e6, baseline_s=w / 1e6, ratio=ours["extra"] / w,
            goal=f"<= {GOAL}x the weights' bytes", unit="MB",
            notes=f"{quick}peak above the process after its imports, vs the safetensors files' tensor bytes; "
                  f"model {kept}; raw load_file + touch peaks at {raw['extra'] / 1e6:.0f} MB ({raw['extra'] / w:.2f}x); "
                  f"{(ours['after'] - ours['before']) / 1e6:.0f} MB resident after, of which touching the model's "
                  f"pages brought in {ours['lazy_bytes'] / 1e6:.0f} MB (left on a lazy mmap)"))
        out.append(dict(
            name=f"{name}: time", ours_s=ours["seconds"], baseline_s=raw["seconds"],
            ratio=ours["seconds"] / raw["seconds"] if raw["seconds"] > 0 else None,
            goal="report (vs the raw safetensors read of the same files)", unit="s",
            notes=f"{quick}raw: load_file + touch every page of {w / 1e6:.0f} MB"
                  + (f"; from_pretrained kwargs {ours['from_pretrained_kwargs']}" if key == "final" else "")))
    return out


def run(quick: bool = False) -> list[dict]:
    return rows(measure(quick))


def print_table(m: dict) -> None:
    """One line per measurement: seconds, peak RSS above the process after imports, the weights, ratios."""
    print(f"{'row':42s} {'seconds':>8s} {'peak MB':>8s} {'weights MB':>10s} {'RSS/weights':>11s} {'time/raw':>8s}")
    names = {"build": "build from pretrained parts", "build_raw": "  raw: load_file + touch, the parts' files",
             "final": "load final/", "final_raw": "  raw: load_file + touch, final/"}
    for key, name in names.items():
        r = m[key]
        raw = m[key if key.endswith("_raw") else f"{key}_raw"]
        ratio = r["extra"] / r["weights"]
        flag = "" if key.endswith("_raw") else ("  ok" if ratio <= GOAL else f"  > {GOAL}x goal")
        print(f"{name:42s} {r['seconds']:8.2f} {r['extra'] / 1e6:8.0f} {r['weights'] / 1e6:10.0f} "
              f"{ratio:10.2f}x {r['seconds'] / raw['seconds']:7.1f}x{flag}")
    for key in ("build", "final"):
        r = m[key]
        print(f"{names[key]}: {r['params'] / 1e6:.1f} M params, {', '.join(r['dtypes'])} on {', '.join(r['devices'])}, "
              f"{r['param_bytes'] / 1e6:.0f} MB of parameters; resident after: +{(r['after'] - r['before']) / 1e6:.0f} MB "
              f"(touching its pages brought in {r['lazy_bytes'] / 1e6:.0f} MB)"
              + (f"; from_pretrained kwargs {r['from_pretrained_kwargs']}" if key == "final" else ""))
    if not all(r.get("peak_reset") for k, r in m.items() if isinstance(r, dict)):
        print("(no /proc/self/clear_refs: peaks may include the imports' own transient peak)")
    if m["quick"]:
        print("(--quick: one interpreter made the parts and measured all four in turn; the numbers are not meaningful)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        from bench import print_rows

        result = measure(quick="--quick" in sys.argv)
        print_table(result)
        print()
        print_rows(rows(result))
