"""`baton eval --quick` on the committed pair writes its files with sane, recomputable values."""
import csv

import pytest

from baton.engine.answers import normalize_answer
from baton.engine.cli import main
from baton.models.synthvqa_task import TIERS, generate


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    assert main(["eval", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_files_written(quick):
    for name in ("results.csv", "predictions.csv", "routing.csv", "results.md", "accuracy_latency.png"):
        assert (quick / name).stat().st_size > 0, name


def test_results_csv_columns_and_values(quick):
    rows = read(quick / "results.csv")
    assert list(rows[0]) == ["mode", "selector", "budget", "tier", "accuracy", "mean_seconds", "n"]
    # 4 plain modes + (transfer, auto) x 4 selectors x 3 budgets, each over 5 tiers + "all"
    assert len(rows) == (4 + 2 * 4 * 3) * (len(TIERS) + 1)
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert float(r["mean_seconds"]) > 0
        assert int(r["n"]) == (len(TIERS) if r["tier"] == "all" else 1)
    assert {r["mode"] for r in rows} == {"small", "large", "small-reason", "large-reason", "transfer", "auto"}
    assert {r["budget"] for r in rows if r["mode"] == "auto"} == {"0.25", "0.5", "1.0"}


def test_accuracy_is_recomputed_from_the_generator(quick):
    """Gold answers come from a fresh generator run, not from the eval's own files."""
    items = generate("heldout", len(TIERS), seed=0)
    preds = read(quick / "predictions.csv")
    for p in preds:
        item = items[int(p["item"])]
        assert p["gold"] == item.answer and p["tier"] == item.tier
    for r in read(quick / "results.csv"):
        run = r["mode"] if r["selector"] == "-" else None
        if run is None:
            same_as_full = r["selector"] == "full" or r["budget"] == "1.0"
            run = f"{r['mode']}/full@1" if same_as_full else f"{r['mode']}/{r['selector']}@{float(r['budget']):g}"
        sel = [p for p in preds if p["run"] == run and (r["tier"] == "all" or p["tier"] == r["tier"])]
        correct = [normalize_answer(p["answer"]) == normalize_answer(items[int(p["item"])].answer) for p in sel]
        assert float(r["accuracy"]) == pytest.approx(sum(correct) / len(correct), abs=1e-4)


def test_routing_split_adds_up(quick):
    rows = {r["tier"]: r for r in read(quick / "routing.csv")}
    assert set(rows) == {*TIERS, "all"}
    for r in rows.values():
        assert int(r["agree"]) + int(r["transfer"]) + int(r["other"]) == int(r["n"])
    text = (quick / "results.md").read_text()
    assert "auto routing" in text and "selectors at equal budget" in text
