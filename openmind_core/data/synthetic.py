"""The seeded synthetic source: images of coloured shapes with captions and VQA pairs.

Every caption and answer is a function of the pixels, so a tiny model can learn it and a trained
run can be told from an untrained one: one to three shapes of one kind and one colour, placed in
named regions.  Captions read "a red circle at the top left" / "two blue squares"; questions ask
the colour, the shape, the count, or (for a single shape) the position, and answers come from a
handful of classes ("red", "circle", "2", "top left"), so exact-match accuracy above chance is
measurable.  English by default, Chinese with ``language="zh"``.

The same (seed, sizes, language) always gives the same PNG bytes and the same rows.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

GENERATOR_VERSION = 1

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 205, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
# region name -> centre as a fraction of the image side
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
NUMBER_WORDS = {"en": {1: "one", 2: "two", 3: "three"}, "zh": {1: "一", 2: "两", 3: "三"}}

ZH = {
    "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
    "circle": "圆形", "square": "正方形", "triangle": "三角形",
    "top left": "左上角", "top right": "右上角", "bottom left": "左下角", "bottom right": "右下角",
    "center": "中间",
}


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    positions: tuple[str, ...]  # one region per shape

    @property
    def count(self) -> int:
        return len(self.positions)


def random_scene(rng: random.Random) -> Scene:
    count = rng.choice((1, 1, 2, 3))  # single shapes are the most common (they carry a position)
    regions = rng.sample(list(POSITIONS), count)
    return Scene(rng.choice(SHAPES), rng.choice(list(COLORS)), tuple(regions))


def render(scene: Scene, size: int, rng: random.Random) -> bytes:
    """PNG bytes of the scene on a light background, with small jitter in size and place."""
    bg = tuple(rng.randint(225, 250) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    fill = COLORS[scene.color]
    for region in scene.positions:
        cx, cy = POSITIONS[region]
        cx = (cx + rng.uniform(-0.04, 0.04)) * size
        cy = (cy + rng.uniform(-0.04, 0.04)) * size
        r = rng.uniform(0.11, 0.16) * size
        box = (cx - r, cy - r, cx + r, cy + r)
        if scene.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif scene.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def caption(scene: Scene, language: str = "en") -> str:
    if language == "zh":
        color, shape = ZH[scene.color], ZH[scene.shape]
        if scene.count == 1:
            return f"{ZH[scene.positions[0]]}有一个{color}{shape}"
        return f"图中有{NUMBER_WORDS['zh'][scene.count]}个{color}{shape}"
    if scene.count == 1:
        return f"a {scene.color} {scene.shape} at the {scene.positions[0]}"
    return f"{NUMBER_WORDS['en'][scene.count]} {scene.color} {scene.shape}s"


def question_answer(scene: Scene, rng: random.Random, language: str = "en") -> tuple[str, str]:
    kinds = ["color", "shape", "count"] + (["position"] if scene.count == 1 else [])
    kind = rng.choice(kinds)
    if language == "zh":
        shape = ZH[scene.shape]
        if kind == "color":
            return f"{shape}是什么颜色？", ZH[scene.color]
        if kind == "shape":
            return "图中是什么形状？", shape
        if kind == "count":
            return "图中有几个形状？", str(scene.count)
        return f"{shape}在哪里？", ZH[scene.positions[0]]
    plural = scene.shape + ("s" if scene.count > 1 else "")
    if kind == "color":
        verb = "are the" if scene.count > 1 else "is the"
        return f"What color {verb} {plural}?", scene.color
    if kind == "shape":
        return "What shape is in the image?", scene.shape
    if kind == "count":
        return "How many shapes are there?", str(scene.count)
    return f"Where is the {scene.shape}?", scene.positions[0]


def generate(
    out_dir: str | Path,
    num_captions: int = 1000,
    num_vqa: int = 500,
    image_size: int = 64,
    language: str = "en",
    seed: int = 0,
    image_subdir: str = "files",
) -> tuple[Path, Path, int]:
    """Write ``captions.jsonl``, ``vqa.jsonl`` and PNGs under ``out_dir/image_subdir``.

    Image paths in the JSONL are relative to ``out_dir/image_subdir``.  Returns the two JSONL
    paths and the number of images written.
    """
    if language not in ("en", "zh"):
        raise ValueError(f"synthetic language must be 'en' or 'zh', got {language!r}")
    out = Path(out_dir)
    img_dir = out / image_subdir
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"openmind-synthetic-{seed}")
    cap_lines: list[str] = []
    vqa_lines: list[str] = []
    for i in range(num_captions):
        scene = random_scene(rng)
        name = f"cap_{i:06d}.png"
        (img_dir / name).write_bytes(render(scene, image_size, rng))
        cap_lines.append(json.dumps({"image": name, "text": caption(scene, language), "language": language},
                                    ensure_ascii=False))
    for i in range(num_vqa):
        scene = random_scene(rng)
        name = f"vqa_{i:06d}.png"
        (img_dir / name).write_bytes(render(scene, image_size, rng))
        q, a = question_answer(scene, rng, language)
        vqa_lines.append(json.dumps({"image": name, "question": q, "answer": a, "language": language},
                                    ensure_ascii=False))
    cap_path, vqa_path = out / "captions.jsonl", out / "vqa.jsonl"
    cap_path.write_text("".join(line + "\n" for line in cap_lines), encoding="utf-8")
    vqa_path.write_text("".join(line + "\n" for line in vqa_lines), encoding="utf-8")
    return cap_path, vqa_path, num_captions + num_vqa
