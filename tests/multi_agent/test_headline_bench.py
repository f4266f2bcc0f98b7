"""bench/headline.py --quick end to end on the tiny presets (a smoke test of the bench itself:
table, speedup summary, router check, TTFT table, PNG and JSON)."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_headline_quick_runs_and_reports(tmp_path, capsys):
    sys.path.insert(0, ROOT)
    from bench import headline

    png, out = tmp_path / "h.png", tmp_path / "h.json"
    rc = headline.main(["--quick", "--small", "tiny", "--large", "tiny-hd32", "--lengths", "8", "--batches", "1,2",
                        "--agreement", "1.0,0.5,0.0", "--brief-tokens", "3", "--png", str(png), "--json", str(out)])
    assert rc == 0 and png.stat().st_size > 0
    text = capsys.readouterr().out
    assert "Largest auto speedup over large-reason" in text and "Router: at most" in text
    assert "agreement hook" in text  # results say their verification came from the hook
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 * 1 * 3  # batches x lengths^2 x rates
    assert [r[0] for r in data["ttft"]][:2] == ["transfer, no prefill-ahead", "transfer, prefill-ahead"]
    by_rate = {(r[0], r[3]): float(r[7]) for r in data["rows"]}
    # batch 1: auto at 50% agreement is the mean of the all-agree and none-agree figures
    assert abs(by_rate[(1, "0.50")] - (by_rate[(1, "1.00")] + by_rate[(1, "0.00")]) / 2) < 0.011


def test_headline_paired_runs_each_cell_side_by_side(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, ROOT)
    from bench import headline

    runs = []
    original = headline.Bench.run

    def recording(self, team, mode, n, repeats=None):
        kind = "router" if team.router is not None and not isinstance(team.router.cost, headline.Prefer) else \
            "auto-lr" if team.router is not None else "auto"
        runs.append((mode, n, kind, repeats))
        return original(self, team, mode, n, repeats)

    monkeypatch.setattr(headline.Bench, "run", recording)
    out = tmp_path / "h.json"
    rc = headline.main(["--quick", "--small", "tiny", "--large", "tiny-hd32", "--lengths", "8", "--batches", "2",
                        "--agreement", "0.5", "--brief-tokens", "3", "--repeats", "2", "--paired", "--no-ttft",
                        "--png", str(tmp_path / "h.png"), "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["ttft"] == [] and len(data["rows"]) == 1
    assert data["rows"][0][10].endswith("L") and "T/" in data["rows"][0][10]  # the router's route counts
    cell = [k for mode, n, k, rep in runs if mode == "auto" and n == 2]
    # two repeats of the three paths, one run each, the order rotated between repeats
    assert cell == ["auto", "auto-lr", "router", "auto-lr", "router", "auto"]
    assert all(rep == 1 for mode, n, k, rep in runs if mode == "auto" and n == 2)
    ((b, ls, ll, r, times),) = data["repeats"]  # every repeat's time of each path, for the paired line
    assert (b, ls, ll, r) == (2, 8, 8, 0.5) and all(len(times[k]) == 2 for k in ("auto", "auto-lr", "router"))
    assert "Router, paired (2 repeats" in capsys.readouterr().out


def test_router_summary_separates_choice_cost_from_noise():
    """The choice line weighs the fixed paths by the router's route counts: a router that sends
    every request down the better path costs +0% whatever its own (noisy) time says; half the
    requests down a path 50% slower cost +25%."""
    sys.path.insert(0, ROOT)
    from bench import headline

    def row(agree, auto, auto_lr, router, route):
        return [16, 512, 1024, f"{agree:.2f}", "0", "0", "0", f"{auto:.2f}", f"{auto_lr:.2f}", f"{router:.2f}",
                route, "1.00x"]

    same_path = [row(0.0, 10.0, 20.0, 11.5, "16T/0L")]  # chose the better path; 15% slower by noise
    lines = headline.router_summary(same_path)
    assert "at most +15.0%" in lines[0] and "at most +0.0%" in lines[1]
    split = same_path + [row(0.0, 30.0, 20.0, 21.0, "8T/8L"), row(0.5, 10.0, 12.0, 9.0, "8T/0L")]
    lines = headline.router_summary(split)
    assert "at most +25.0%" in lines[1]
    assert "faster than both in 1 cells: b16 512/1024 @ 0.50" in lines[0]


def test_paired_router_ratio_cancels_drift_between_repeats():
    """Each repeat's router time over the better fixed path's time in the same repeat, median
    over repeats: a machine twice as slow in one repeat does not move it, while best-of figures
    taken from different repeats would."""
    sys.path.insert(0, ROOT)
    from bench import headline

    # auto is the better path (median 12 < 24); the router runs 3-5% over auto in each repeat, the
    # second repeat on a machine twice as slow. Best of 3 would give 10.5 / 10 (+5%).
    times = {"auto": [10.0, 20.0, 12.0], "auto-lr": [20.0, 40.0, 24.0], "router": [10.5, 20.6, 12.36]}
    expected = sorted(t / a for t, a in zip(times["router"], times["auto"]))[1]
    assert abs(headline.paired_router_ratio(times) - expected) < 1e-12 and abs(expected - 1.03) < 1e-9
    # the better path is chosen by median, here auto->LR
    flipped = {"auto": times["auto-lr"], "auto-lr": times["auto"], "router": times["router"]}
    assert abs(headline.paired_router_ratio(flipped) - 1.03) < 1e-9
    line = headline.paired_router_line({(16, 512, 1024, 0.0): times,
                                        (16, 512, 512, 0.5): {**times, "router": [9.0, 19.0, 11.0]}})
    assert "(3 repeats;" in line and "at most +3.0% (b16 512/1024 @ 0.00" in line
    assert "faster than the better path in 1 of 2 cells" in line


def test_router_split_load_runs_both_waves_with_outside_traffic(capsys, monkeypatch):
    """bench/router_split_load.py on the tiny presets: in wave A the router sees the outside
    sequences on the loaded engine, in wave B none, and the fixed baselines keep their routes
    even when the small engine is loaded on a shared device."""
    sys.path.insert(0, ROOT)
    from bench import router_split_load
    from baton.engine.latency_router import LatencyRouter

    loads = []
    original = LatencyRouter.choose_group

    def recording(self, shapes, load):
        loads.append(dict(load))
        return original(self, shapes, load)

    monkeypatch.setattr(LatencyRouter, "choose_group", recording)
    rc = router_split_load.main(["--small", "tiny", "--large", "tiny-hd32", "--load", "3", "--load-on", "small",
                                 "--batch", "2", "--small-len", "8", "--large-len", "8", "--repeats", "1",
                                 "--image-size", "64", "--brief-tokens", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] in (["auto"], ["auto->LR"], ["router"])}
    assert rows["auto->LR"].rstrip().endswith("A 0T/2L, B 0T/2L") and rows["auto"].rstrip().endswith("A 2T, B 2T")
    # two decisions per wave pair for each routed path (auto->LR and router): loaded, then idle
    assert sorted(ld["small"] for ld in loads) == [0, 0, 3, 3] and all(ld["large"] == 0 for ld in loads)
