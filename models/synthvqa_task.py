"""SynthVQA: a synthetic visual question-answering task with exact answers and short reasoning
traces, small enough to train tiny Qwen3-VL checkpoints on a CPU.

An image is a GRID x GRID board of CELL-pixel cells (one vision patch per cell); a cell is
empty (white) or a square of one of COLOURS. Question tiers, easy to hard:

    dominant  which colour has the most squares          -> a colour
    count     how many squares of a colour               -> a number
    compare   more squares of colour a or of colour b    -> a colour
    spatial   is the (single) a square left of / above the (single) b square -> yes / no
              (x = column, y = row, counted from 1 at the top left)
    sum       how many squares of colours a and b in total -> a number

Every item carries the exact answer and a reasoning trace that derives it step by step.

Splits never share an image: an image belongs to the held-out split when the first byte of
the SHA-256 of its pixels is below HELDOUT_SHARE * 256, else to train; each split's stream
rejects images of the other split.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

GRID = 4
CELL = 16  # = the vision patch size, so each patch sees exactly one cell
IMAGE_SIZE = GRID * CELL
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40),
}
BACKGROUND = (255, 255, 255)
EMPTY_PROB = 0.4
TIERS = ("dominant", "count", "compare", "spatial", "sum")
SPLITS = ("train", "heldout")
HELDOUT_SHARE = 0.125
_SPLIT_SALT = {"train": 0x5EED, "heldout": 0xE7A1}


@dataclass(frozen=True)
class Item:
    tier: str
    grid: tuple[tuple[str | None, ...], ...]  # colour name or None per cell, row-major
    question: str
    answer: str
    reasoning: str

    @property
    def image(self) -> Image.Image:
        return render(self.grid)

    def messages(self) -> list[dict]:
        """One user turn: the image, then the question (the multi-agent layer adds its instruction)."""
        return [{"role": "user", "content": [{"type": "image", "image": self.image},
                                             {"type": "text", "text": self.question}]}]


def render(grid) -> Image.Image:
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, dtype=np.uint8)
    for r, row in enumerate(grid):
        for c, colour in enumerate(row):
            if colour is not None:
                img[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = COLOURS[colour]
    return Image.fromarray(img, "RGB")


def split_of(grid) -> str:
    first = hashlib.sha256(render(grid).tobytes()).digest()[0]
    return "heldout" if first < HELDOUT_SHARE * 256 else "train"


def _counts(grid) -> dict[str, int]:
    flat = [c for row in grid for c in row]
    return {name: flat.count(name) for name in COLOURS}


def _where(grid, colour) -> list[tuple[int, int]]:
    return [(r, c) for r, row in enumerate(grid) for c, x in enumerate(row) if x == colour]


def _random_grid(rng: random.Random, forced: dict[str, int] | None = None):
    """Random board; `forced` places exactly that many squares of those colours."""
    names = list(COLOURS)
    cells = [None if rng.random() < EMPTY_PROB else rng.choice(names) for _ in range(GRID * GRID)]
    if forced:
        free = [n for n in names if n not in forced]
        cells = [rng.choice(free) if c in forced else c for c in cells]
        spots = rng.sample(range(GRID * GRID), sum(forced.values()))
        i = 0
        for colour, k in forced.items():
            for s in spots[i:i + k]:
                cells[s] = colour
            i += k
    return tuple(tuple(cells[r * GRID:(r + 1) * GRID]) for r in range(GRID))


def _make(tier: str, rng: random.Random) -> Item | None:
    """One item of `tier`, or None when the drawn board does not suit it (the caller redraws)."""
    names = list(COLOURS)
    if tier == "spatial":
        a, b = rng.sample(names, 2)
        grid = _random_grid(rng, {a: 1, b: 1})
        (ra, ca), (rb, cb) = _where(grid, a)[0], _where(grid, b)[0]
        if rng.random() < 0.5:
            if ca == cb:
                return None
            q = f"Is the {a} square left of the {b} square?"
            yes = ca < cb
            steps = f"{a} x {ca + 1}. {b} x {cb + 1}. {ca + 1} {'<' if yes else '>'} {cb + 1}."
        else:
            if ra == rb:
                return None
            q = f"Is the {a} square above the {b} square?"
            yes = ra < rb
            steps = f"{a} y {ra + 1}. {b} y {rb + 1}. {ra + 1} {'<' if yes else '>'} {rb + 1}."
        answer = "yes" if yes else "no"
        return Item(tier, grid, q, answer, f"{steps} So {answer}.")
    grid = _random_grid(rng)
    n = _counts(grid)
    if tier == "dominant":
        best = max(n.values())
        if list(n.values()).count(best) > 1:
            return None
        top = max(n, key=n.get)
        steps = " ".join(f"{c} {n[c]}." for c in names)
        return Item(tier, grid, "Which colour has the most squares?", top, f"{steps} So {top}.")
    if tier == "count":
        a = rng.choice(names)
        rows = [sum(x == a for x in row) for row in grid]
        steps = f"{a} by row {' '.join(map(str, rows))}. So {n[a]}."
        return Item(tier, grid, f"How many {a} squares are there?", str(n[a]), steps)
    a, b = rng.sample(names, 2)
    if tier == "compare":
        if n[a] == n[b]:
            return None
        more = a if n[a] > n[b] else b
        steps = f"{a} {n[a]}. {b} {n[b]}. So {more}."
        return Item(tier, grid, f"Are there more {a} or {b} squares?", more, steps)
    if tier == "sum":
        steps = f"{a} {n[a]}. {b} {n[b]}. {n[a]} + {n[b]} = {n[a] + n[b]}. So {n[a] + n[b]}."
        return Item(tier, grid, f"How many {a} and {b} squares are there in total?", str(n[a] + n[b]), steps)
    raise ValueError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")


def generate(split: str, n: int, seed: int = 0, tiers=TIERS) -> list[Item]:
    """n items of `split`, tiers in turn (item i has tier tiers[i % len(tiers)]); deterministic
    in (split, seed)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(_SPLIT_SALT[split] * 1_000_003 + seed)
    items: list[Item] = []
    while len(items) < n:
        tier = tiers[len(items) % len(tiers)]
        item = _make(tier, rng)
        if item is not None and split_of(item.grid) == split:
            items.append(item)
    return items


TRAINED_DIR = Path(__file__).resolve().parent / "trained"
PAIR = ("synthvqa-small", "synthvqa-large")


def trained_pair(root: str | Path | None = None) -> tuple[Path, Path]:
    """The committed (small, large) checkpoints trained on this task (engine/synthvqa_train.py);
    CheckpointError naming the command that makes them when absent."""
    from baton.errors import CheckpointError

    base = Path(root) if root is not None else TRAINED_DIR
    paths = tuple(base / name for name in PAIR)
    missing = [str(p) for p in paths if not (p / "model.safetensors").is_file()]
    if missing:
        raise CheckpointError(f"trained SynthVQA checkpoint(s) missing: {', '.join(missing)}; make them with "
                              f"`python -m baton.engine.synthvqa_train --out {base}`")
    return paths
