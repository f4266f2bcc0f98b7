"""The SynthVQA generator's answers, checked against the rendered pixels alone."""
import hashlib

import numpy as np
import pytest

from baton.models import synthvqa_task as task

# what a reader of the picture sees: the four square colours, white background
PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}


def read_board(image) -> list[list[str | None]]:
    """Colour of each cell from its pixels: every pixel of a cell must be one palette colour."""
    px = np.asarray(image)
    size = px.shape[0] // 4
    board = []
    for r in range(4):
        row = []
        for c in range(4):
            cell = px[r * size:(r + 1) * size, c * size:(c + 1) * size].reshape(-1, 3)
            colours = {tuple(int(v) for v in p) for p in np.unique(cell, axis=0)}
            assert len(colours) == 1, "a cell holds one flat colour"
            (rgb,) = colours
            row.append(next((n for n, v in PALETTE.items() if v == rgb), None if rgb == (255, 255, 255) else "?"))
        board.append(row)
    return board


def pixel_counts(image) -> dict[str, int]:
    """Squares per colour from pixel areas (a square is 1/16 of the picture)."""
    px = np.asarray(image).reshape(-1, 3)
    cell = px.shape[0] // 16
    return {n: int((px == np.array(rgb)).all(axis=1).sum()) // cell for n, rgb in PALETTE.items()}


def expected_answer(question: str, image) -> str:
    words = question.rstrip("?").split()
    counts = pixel_counts(image)
    board = read_board(image)
    colours = [w for w in words if w in PALETTE]
    if question.startswith("Which colour"):
        return max(counts, key=counts.get)
    if question.startswith("How many") and "total" in question:
        return str(counts[colours[0]] + counts[colours[1]])
    if question.startswith("How many"):
        return str(counts[colours[0]])
    if question.startswith("Are there more"):
        return colours[0] if counts[colours[0]] > counts[colours[1]] else colours[1]
    if question.startswith("Is the"):
        a, b = ([(r, c) for r in range(4) for c in range(4) if board[r][c] == x][0] for x in colours)
        if "left of" in question:
            return "yes" if a[1] < b[1] else "no"
        return "yes" if a[0] < b[0] else "no"
    raise AssertionError(f"unexpected question {question!r}")


@pytest.mark.parametrize("split", task.SPLITS)
def test_answers_match_the_pixels(split):
    items = task.generate(split, 200, seed=3)
    assert {i.tier for i in items} == set(task.TIERS)
    for item in items:
        image = item.image
        assert image.size == (task.IMAGE_SIZE, task.IMAGE_SIZE)
        assert expected_answer(item.question, image) == item.answer, item
        # the trace ends on the answer, and its numbers agree with the pixels
        assert item.reasoning.endswith(f"So {item.answer}.")
        counts = pixel_counts(image)
        if item.tier in ("compare", "sum"):
            a, b = [w for w in item.question.rstrip("?").split() if w in PALETTE]
            assert item.reasoning.startswith(f"{a} {counts[a]}. {b} {counts[b]}.")


def test_dominant_and_compare_have_no_ties():
    for item in task.generate("train", 100, seed=1, tiers=("dominant", "compare")):
        counts = sorted(pixel_counts(item.image).values(), reverse=True)
        if item.tier == "dominant":
            assert counts[0] > counts[1]


def test_spatial_items_have_one_square_of_each_named_colour():
    for item in task.generate("heldout", 40, seed=2, tiers=("spatial",)):
        counts = pixel_counts(item.image)
        for w in item.question.rstrip("?").split():
            if w in PALETTE:
                assert counts[w] == 1


def test_splits_never_share_an_image_and_are_deterministic():
    digest = lambda items: {hashlib.sha256(i.image.tobytes()).hexdigest() for i in items}  # noqa: E731
    train = task.generate("train", 1500, seed=0)
    heldout = task.generate("heldout", 300, seed=0)
    assert not digest(train) & digest(heldout)
    again = task.generate("heldout", 300, seed=0)
    assert [(i.question, i.answer, i.grid) for i in again] == [(i.question, i.answer, i.grid) for i in heldout]
    assert task.generate("heldout", 20, seed=1)[0].grid != heldout[0].grid


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        task.generate("test", 1)
