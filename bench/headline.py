"""The paper's headline comparison on this machine: per-request latency of `auto` (mutual
verification, then reasoning transfer) against `large-reason` (the large model reasons by
itself), across agreement rates and reasoning lengths, at batch 1 and with concurrent requests.

Random weights never agree, so each request's verification outcome comes from the agreement
hook (`MultiAgent(agreement=...)`): exactly round(rate * n) of every n requests agree, spread
evenly. Every stage generates exactly its token limit (exact lengths); the small and the large
model's reasoning lengths are set separately.

Columns: large-reason, small-reason, transfer (small reasons, half its reasoning goes to the
large model), auto (disagreement -> transfer), auto->LR (disagreement -> large-reason),
router (disagreement -> whichever `router="latency"` predicts faster) and auto's speedup over
large-reason. At batch 1 the auto columns are r * T(agree) + (1 - r) * T(disagree), both
measured (requests at batch 1 do not interact); with concurrency the mix itself is run.

Also: the large model's final-stage TTFT, measured from the small model's last token, as a
share of a cold prefill (no prefix or encoder cache) of the same prompt, without and with
prefill-ahead and the streaming selector (target <= 10%), and the transfer's wall time with
the two engines stepped in turn (default) or overlapped in two threads (overlap_engines).

    python bench/headline.py --quick            # tiny demo presets, about a minute
    python bench/headline.py                    # pair-0.3b / pair-1.5b, 448 px, lengths 128,512,1024
    python bench/headline.py --batches 16 --paired --no-ttft   # the router against both fixed paths, side by side,
                                                               # with the median of per-repeat ratios
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import statistics
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_flags, median_ratio, print_table  # noqa: E402
from baton import LLM, MultiAgent, SamplingParams  # noqa: E402
from baton.engine.demo import make_demo_image  # noqa: E402
from baton.engine.latency_router import AnalyticCostModel  # noqa: E402

PAPER_AGREEMENT = 0.86  # MMBench: 3,736 of 4,329 questions end at the brief stage


class CountingAgreement:
    """Agreement hook: call k agrees iff floor((k+1) r) > floor(k r), so every n calls hold
    round(n r) agreements spread evenly (r = 1: all, r = 0: none)."""

    def __init__(self, rate: float):
        self.rate, self.calls = rate, 0

    def __call__(self, small_text: str, large_text: str) -> bool:
        k, self.calls = self.calls, self.calls + 1
        return math.floor((k + 1) * self.rate + 1e-9) > math.floor(k * self.rate + 1e-9)


class Prefer:
    """A cost model that makes the router always take `path` (the fixed-path baselines)."""

    def __init__(self, path: str):
        self.path = path

    def prefill(self, model, new_tokens, prefix_tokens):
        return 0.0

    def decode(self, model, context_len, num_tokens, batch=1):
        slow = "small" if self.path == "large-reason" else "large"
        return 1e9 * num_tokens if model == slow else 0.0


class Bench:
    def __init__(self, args):
        from baton.models.synthetic import ensure_checkpoint

        kw = dict(device=args.device, dtype=args.dtype, kv_cache_bytes=args.kv_bytes // 2)
        self.small = LLM(str(ensure_checkpoint(args.small)), **kw)
        self.large = LLM(str(ensure_checkpoint(args.large)), **kw)
        # the same weights, no prefix or encoder cache: the cold prefill the TTFT is compared with
        self.cold = LLM(None, device=args.device, dtype=args.dtype, kv_cache_bytes=args.kv_bytes // 4,
                        enable_prefix_caching=False, encoder_cache_bytes=0, _model_cfg=self.large.model_cfg, _model=self.large.model,
                        _processor=self.large.processor)
        self.cost = AnalyticCostModel({"small": self.small, "large": self.large})  # shared, calibrated online
        self.args = args
        self.seed = 1000
        self.images = {}  # id(result) -> its image

    def questions(self, n: int) -> list:
        out = []
        for _ in range(n):  # a new image per request: no reuse across requests
            self.seed += 1
            image = make_demo_image(self.args.image_size, self.args.image_size, seed=self.seed)
            out.append([{"role": "user", "content": [{"type": "image", "image": image},
                                                     {"type": "text", "text": "Which colour covers most of it?"}]}])
        return out

    def team(self, ls: int, ll: int, **kw) -> MultiAgent:
        kw.setdefault("selector", "truncate")
        kw.setdefault("budget", 0.5)
        kw.setdefault("stream_chunk", max(2, min(16, ls // 8)))  # several chunks even in short reasoning
        team = MultiAgent(self.small, self.large, reason_max_tokens={"small": ls, "large": ll},
                          brief_max_tokens=self.args.brief_tokens, exact_lengths=True, **kw)
        if isinstance(kw.get("cost_model"), Prefer):
            # a fixed path: on a shared device a loaded small engine would add its (huge) steps
            # to large-reason's prediction too, and the choice would no longer be fixed
            team.router.shared_device = False
        return team

    def run(self, team: MultiAgent, mode: str, n: int, repeats: int | None = None):
        """Mean per-request seconds of n concurrent requests, and their results: the best of
        `repeats` (default --repeats) runs (new images each time), which damps other jobs on a
        shared machine."""
        best = None
        for _ in range(repeats or self.args.repeats):
            questions = self.questions(n)
            results = team.run_batch(questions, mode=mode)
            self.images.update({id(r): q[0]["content"][0]["image"] for r, q in zip(results, questions)})
            for r in results:
                if r.error:
                    raise RuntimeError(r.error)
                for st in r.stages:
                    self.cost.observe(st)
            mean = sum(r.seconds for r in results) / n
            print(f"  {mode:13s} x{n}: {mean:.2f} s per request ({results[0].mode})", file=sys.stderr, flush=True)
            if best is None or mean < best[0]:
                best = (mean, results)
        return best


def table_rows(b, lengths, rates, m):
    rows = []
    for ls in lengths:
        for ll in lengths:
            for r in rates:
                lr, auto = m["large-reason"][ll], m["auto"][(ls, ll, r)]
                rows.append([b, ls, ll, f"{r:.2f}", f"{lr:.2f}", f"{m['small-reason'][ls]:.2f}",
                             f"{m['transfer'][ls]:.2f}", f"{auto:.2f}", f"{m['auto-lr'][(ls, ll, r)]:.2f}",
                             f"{m['router'][(ls, ll, r)]:.2f}", m["route"].get((ls, ll, r), "-"),
                             f"{lr / auto:.2f}x"])
    return rows


def measure_batch(bench: Bench, b: int, lengths, rates):
    m = {k: {} for k in ("large-reason", "small-reason", "transfer", "auto", "auto-lr", "router", "route")}
    top = max(lengths)
    for ll in lengths:
        m["large-reason"][ll] = bench.run(bench.team(top, ll), "large-reason", b)[0]
    for ls in lengths:
        m["small-reason"][ls] = bench.run(bench.team(ls, top), "small-reason", b)[0]
        m["transfer"][ls] = bench.run(bench.team(ls, top), "transfer", b)[0]
    if b == 1:  # auto(r) = r T(agree) + (1 - r) T(disagree), each measured
        agree = bench.run(bench.team(top, top, agreement=lambda s, l: True), "auto", 1)[0]
        off = dict(agreement=lambda s, l: False)
        dis = {ls: bench.run(bench.team(ls, top, **off), "auto", 1)[0] for ls in lengths}
        dis_lr = {ll: bench.run(bench.team(top, ll, router="latency", cost_model=Prefer("large-reason"), **off),
                                "auto", 1)[0] for ll in lengths}
        for ls in lengths:
            for ll in lengths:
                t, (res,) = bench.run(bench.team(ls, ll, router="latency", cost_model=bench.cost, **off), "auto", 1)
                route = res.route
                for r in rates:
                    m["auto"][(ls, ll, r)] = r * agree + (1 - r) * dis[ls]
                    m["auto-lr"][(ls, ll, r)] = r * agree + (1 - r) * dis_lr[ll]
                    m["router"][(ls, ll, r)] = r * agree + (1 - r) * t
                    m["route"][(ls, ll, r)] = (f"{route.choice} pred {route.predicted_chosen:.2f}s"
                                               f" act {route.actual_seconds:.2f}s")
        return m
    if bench.args.paired:
        return measure_paired(bench, b, lengths, rates, m)
    for r in rates:
        for ls in lengths:
            t = bench.run(bench.team(ls, top, agreement=CountingAgreement(r)), "auto", b)[0]
            for ll in lengths:
                m["auto"][(ls, ll, r)] = t
        for ll in lengths:
            t = bench.run(bench.team(top, ll, agreement=CountingAgreement(r), router="latency",
                                     cost_model=Prefer("large-reason")), "auto", b)[0]
            for ls in lengths:
                m["auto-lr"][(ls, ll, r)] = t
        for ls in lengths:
            for ll in lengths:
                t, res = bench.run(bench.team(ls, ll, agreement=CountingAgreement(r), router="latency",
                                              cost_model=bench.cost), "auto", b)
                m["router"][(ls, ll, r)] = t
                m["route"][(ls, ll, r)] = route_counts(res)
    return m


def router_summary(rows) -> list[str]:
    """The router targets over the table rows: within 5% of the better fixed path everywhere,
    strictly faster than both somewhere. Beside the raw ratio (router time / better fixed time,
    which on this VM moves by 10-15% between runs of identical work), the decision's own cost:
    the fixed paths' times weighted by the router's route counts (T: the transfer path that
    auto takes, L: auto->LR) over the better one, measured in the same pass. Where the router
    sent every request down one path, that ratio is exact and the rest is noise."""
    worst, worst_choice, wins = 0.0, 0.0, []
    for row in rows:
        auto, auto_lr, router = float(row[7]), float(row[8]), float(row[9])
        better = min(auto, auto_lr)
        worst = max(worst, router / better - 1)
        n_t, n_l = (int(c[:-1]) for c in row[10].split("/")) if "/" in row[10] else (0, 0)
        if n_t + n_l:
            worst_choice = max(worst_choice, (n_t * auto + n_l * auto_lr) / (n_t + n_l) / better - 1)
        if router < better and float(row[3]) < 1:
            wins.append(f"b{row[0]} {row[1]}/{row[2]} @ {row[3]}")
    return [f"Router: at most {worst:+.1%} vs the better fixed path (target <= +5%); "
            f"faster than both in {len(wins)} cells{': ' + ', '.join(wins[:6]) if wins else ''}",
            f"Router's choices: the paths it chose cost at most {worst_choice:+.1%} over the better fixed path "
            f"(fixed-path times weighted by its route counts; the rest of the line above is run-to-run noise)"]


def rotated(order: list, i: int) -> list:
    """Repeat i's run order: `order` rotated by i, so each path runs in every position."""
    k = i % len(order)
    return order[k:] + order[:k]


def route_counts(results) -> str:
    choices = [x.route.choice for x in results if x.route is not None]
    return f"{choices.count('transfer')}T/{choices.count('large-reason')}L" if choices else "-"


def measure_paired(bench: Bench, b: int, lengths, rates, m):
    """--paired: auto, auto->LR and the router of each cell run back to back, in an order that
    rotates each repeat, best of --repeats each, so the machine's drift hits all three alike
    (evenly only when --repeats is a multiple of 3; unpaired, one auto run per small length
    stands for every large length)."""
    for r in rates:
        for ls in lengths:
            for ll in lengths:
                kws = {"auto": {}, "auto-lr": dict(router="latency", cost_model=Prefer("large-reason")),
                       "router": dict(router="latency", cost_model=bench.cost)}
                order, best, times = list(kws), {}, {key: [] for key in kws}
                for i in range(bench.args.repeats):
                    for key in rotated(order, i):
                        team = bench.team(ls, ll, agreement=CountingAgreement(r), **kws[key])
                        t, res = bench.run(team, "auto", b, repeats=1)
                        times[key].append(t)
                        if key not in best or t < best[key][0]:
                            best[key] = (t, res)
                for key in kws:
                    m[key][(ls, ll, r)] = best[key][0]
                m["route"][(ls, ll, r)] = route_counts(best["router"][1])
                m.setdefault("repeats", {})[(b, ls, ll, r)] = times
    return m


def paired_router_ratio(times: dict[str, list[float]]) -> float:
    """The router against the better fixed path (lower median time) in --paired runs: the median
    over repeats of router / that path, each ratio from one repeat's back-to-back runs, so drift
    between repeats cancels (best-of figures, taken from different repeats, do not)."""
    better = min(("auto", "auto-lr"), key=lambda k: statistics.median(times[k]))
    return median_ratio(times["router"], times[better])


def paired_router_line(cells: dict) -> str:
    """cells: {(batch, small len, large len, agreement): {path: [seconds per repeat]}}."""
    ratios = {cell: paired_router_ratio(t) for cell, t in cells.items()}
    (b, ls, ll, r), worst = max(ratios.items(), key=lambda kv: kv[1])
    repeats = min(len(t["router"]) for t in cells.values())
    return (f"Router, paired ({repeats} repeats; median of router / the better fixed path run beside it): "
            f"at most {worst - 1:+.1%} (b{b} {ls}/{ll} @ {r:.2f}; target <= +5%); "
            f"faster than the better path in {sum(v < 1 for v in ratios.values())} of {len(ratios)} cells")


def ttft_rows(bench: Bench, ls: int):
    """Final-stage TTFT from the small model's last token vs a cold prefill, per transfer variant."""
    off = dict(agreement=lambda s, l: False)
    variants = [
        ("transfer, no prefill-ahead", "transfer", dict(prefill_ahead=False)),
        ("transfer, prefill-ahead", "transfer", {}),
        ("transfer, entropy-stream", "transfer", dict(selector="entropy-stream")),
        ("auto:transfer", "auto", off),
        ("auto:transfer, entropy-stream", "auto", dict(selector="entropy-stream", **off)),
        ("transfer, entropy-stream, overlapped", "transfer", dict(selector="entropy-stream", overlap_engines=True)),
        ("auto:transfer, stream, overlapped", "auto", dict(selector="entropy-stream", overlap_engines=True, **off)),
    ]
    rows = []
    for name, mode, kw in variants:
        t, (res,) = bench.run(bench.team(ls, ls, **kw), mode, 1)
        final = res.stages[-1]
        reason = next(s for s in res.stages if s.name == "small-reason")
        warm = final.start + final.ttft - reason.end
        prompt = {"prompt_token_ids": final.prompt_token_ids, "images": [bench.images[id(res)]]}
        cold = min(bench.cold.generate(prompt, SamplingParams(temperature=0, max_tokens=1))[0].metrics.ttft
                   for _ in range(bench.args.repeats))  # no encoder cache: every run encodes the image
        rows.append([name, ls, f"{t:.2f}", final.prompt_tokens, final.prompt_tokens - final.cached_tokens,
                     f"{warm * 1000:.0f}", f"{cold * 1000:.0f}", f"{warm / cold:.1%}"])
    return rows


def plot(points: dict, path: str) -> None:
    """points: label -> [(agreement, speedup)]; the paper's 86% is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, xy in sorted(points.items()):
        xy = sorted(xy)
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
    ax.axvline(PAPER_AGREEMENT, color="grey", linestyle="--")
    ax.text(PAPER_AGREEMENT, ax.get_ylim()[1], " paper (MMBench) 86%", va="top", fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xlabel("agreement rate (briefs agree)")
    ax.set_ylabel("auto speedup over large-reason (x)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_list(text: str, kind):
    return [kind(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny demo presets and short lengths (about a minute)")
    ap.add_argument("--small", default=None, help="small preset (default pair-0.3b; --quick: demo-small)")
    ap.add_argument("--large", default=None, help="large preset (default pair-1.5b; --quick: demo-large)")
    ap.add_argument("--lengths", default=None, help="reasoning lengths, comma separated (default 128,512,1024)")
    ap.add_argument("--batches", default=None, help="concurrent requests, comma separated (default 1,16)")
    ap.add_argument("--agreement", default="1.0,0.86,0.5,0.0")
    ap.add_argument("--image-size", type=int, default=None, help="default 448 (--quick: 64)")
    ap.add_argument("--brief-tokens", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kv-bytes", type=int, default=None, help="KV cache bytes for the pair (default 4 GiB; quick 512 MiB)")
    ap.add_argument("--png", default="headline.png")
    ap.add_argument("--json", default=None, help="also write every figure here")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (--quick: 1; on a shared, busy CPU more threads oversubscribe it)")
    ap.add_argument("--repeats", type=int, default=None, help="best of N runs per figure (default 2; --quick: 1)")
    ap.add_argument("--paired", action="store_true",
                    help="with concurrency, run auto, auto->LR and the router of each cell back to back")
    ap.add_argument("--no-ttft", action="store_true", help="skip the final-stage TTFT table")
    args = ap.parse_args(argv)
    quick = args.quick
    args.small = args.small or ("demo-small" if quick else "pair-0.3b")
    args.large = args.large or ("demo-large" if quick else "pair-1.5b")
    lengths = parse_list(args.lengths or ("16,48" if quick else "128,512,1024"), int)
    batches = parse_list(args.batches or ("1,4" if quick else "1,16"), int)
    rates = parse_list(args.agreement, float)
    args.image_size = args.image_size or (64 if quick else 448)
    args.kv_bytes = args.kv_bytes or ((512 << 20) if quick else (4 << 30))
    args.repeats = args.repeats or (1 if quick else 2)
    if args.paired and args.repeats % 3:
        print(f"note: --paired rotates 3 runs per cell; with --repeats {args.repeats} (not a multiple of 3) they do "
              "not take each position equally often (at 2 the router always follows auto->LR)")
    args.threads = args.threads or (1 if quick else None)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    bench = Bench(args)
    import torch

    print(f"{args.small} / {args.large}, {args.dtype}, {args.image_size} px, brief {args.brief_tokens} tokens, "
          f"device {bench.large.device}, {torch.get_num_threads()} threads, best of {args.repeats}; "
          f"CPU flags: {cpu_flags()}")
    bench.run(bench.team(8, 8, agreement=lambda s, l: False), "auto", 1)  # warm-up

    headers = ["batch", "small len", "large len", "agree", "large-reason s", "small-reason s", "transfer s",
               "auto s", "auto->LR s", "router s", "router route", "auto speedup"]
    rows, points, repeats = [], {}, {}
    for b in batches:
        m = measure_batch(bench, b, lengths, rates)
        rows += table_rows(b, lengths, rates, m)
        repeats.update(m.get("repeats", {}))
        for ls in lengths:
            for ll in lengths:
                points[f"b{b} small {ls} / large {ll}"] = [
                    (r, m["large-reason"][ll] / m["auto"][(ls, ll, r)]) for r in rates]
    print()
    print("Per-request latency (mean seconds), exact lengths; auto/router agreement set by the hook")
    print_table(headers, rows)

    best = max(((y, label, x) for label, xy in points.items() for x, y in xy), default=None)
    if best:
        print(f"\nLargest auto speedup over large-reason: {best[0]:.2f}x at agreement {best[2]:.2f}, {best[1]}")
    near = [(label, y) for label, xy in points.items() for x, y in xy if abs(x - PAPER_AGREEMENT) < 1e-9]
    if near:
        print("At the paper's 86% agreement: " + ", ".join(f"{label}: {y:.2f}x" for label, y in near))
    for line in router_summary(rows):
        print(line)
    if repeats:
        print(paired_router_line(repeats))

    trows = []
    if not args.no_ttft:
        print("\nFinal stage: TTFT from the small model's last token vs a cold prefill of the same prompt "
              "(target <= 10%)")
        trows = ttft_rows(bench, lengths[0])
        print_table(["variant", "reason len", "wall s", "final prompt", "prefilled", "TTFT ms", "cold ms", "share"],
                    trows)
    plot(points, args.png)
    print(f"\nplot: {args.png}; total {time.perf_counter() - t0:.0f} s"
          "\nAll verification outcomes here come from the agreement hook (random weights never agree).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "headers": headers, "ttft": trows, "points": points,
                       "repeats": [[*cell, t] for cell, t in repeats.items()]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
