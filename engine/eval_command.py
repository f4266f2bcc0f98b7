"""`baton eval`: accuracy and latency of every multi-agent mode on held-out SynthVQA items,
with the trained small / large pair (engine/synthvqa_train.py).

Each configuration (mode, selector, budget) answers every item in one batch (run_batch: the
accuracy), then answers the first --latency-per-tier items of each tier again one request at
a time (the latency: `mean_seconds` is a lone request's seconds, over those items). Transfer and auto run every selector at every budget;
at budget 1.0 every selector keeps the whole reasoning, and "full" ignores the budget, so
those rows share one run (the CSV names the run each row comes from).

Writes into --out: results.csv (mode,selector,budget,tier,accuracy,mean_seconds,n, plus
tier "all"), predictions.csv (every answer beside the generator's), routing.csv (auto's
agree / transfer split per tier), results.md and accuracy_latency.png.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

PLAIN_MODES = ("small", "large", "small-reason", "large-reason")
SELECTORS = ("full", "truncate", "entropy", "attention")
BUDGETS = (0.25, 0.5, 1.0)
CSV_COLUMNS = ("mode", "selector", "budget", "tier", "accuracy", "mean_seconds", "n")
QUICK_PER_TIER = 1
FULL_PER_TIER = 20


@dataclass(frozen=True)
class Config:
    mode: str
    selector: str = "-"
    budget: float | None = None

    @property
    def run(self) -> "Config":
        """The configuration whose run answers this one (equal selections share a run)."""
        if self.mode in PLAIN_MODES or self.selector == "full" or self.budget == 1.0:
            return Config(self.mode, "full", 1.0) if self.mode not in PLAIN_MODES else self
        return self

    @property
    def label(self) -> str:
        return self.mode if self.mode in PLAIN_MODES else f"{self.mode}/{self.selector}@{self.budget:g}"


def configs() -> list[Config]:
    out = [Config(m) for m in PLAIN_MODES]
    for mode in ("transfer", "auto"):
        out += [Config(mode, s, b) for s in SELECTORS for b in BUDGETS]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_PER_TIER} held-out item per tier (under 2 minutes); "
                             f"default {FULL_PER_TIER} per tier")
    parser.add_argument("--out", default=None, help="output directory (default baton-out/eval-quick|full)")
    parser.add_argument("--per-tier", type=int, default=None, help="held-out items per tier")
    parser.add_argument("--latency-per-tier", type=int, default=2,
                        help="items per tier also run alone, one at a time, for mean_seconds")
    parser.add_argument("--seed", type=int, default=0, help="held-out stream seed")
    parser.add_argument("--checkpoints", default=None,
                        help="folder holding synthvqa-small and synthvqa-large (default: the committed pair)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--no-progress", action="store_true")


def run_from_args(args) -> int:
    per_tier = args.per_tier or (QUICK_PER_TIER if args.quick else FULL_PER_TIER)
    out = Path(args.out) if args.out else Path("baton-out") / ("eval-quick" if args.quick else "eval-full")
    summary = run_eval(out, per_tier=per_tier, latency_per_tier=args.latency_per_tier, seed=args.seed, checkpoints=args.checkpoints,
                       device=args.device, attention_backend=args.attention_backend,
                       progress=not args.no_progress)
    print(summary)
    print(f"\nwritten: {', '.join(sorted(p.name for p in out.iterdir()))} in {out}")
    return 0


def build_team(checkpoints=None, device: str = "cpu", attention_backend: str = "auto"):
    from baton import MultiAgent
    from baton.models.synthvqa_task import trained_pair

    small, large = trained_pair(checkpoints)
    # answers are one or two tokens; the longest reasoning trace is about 35
    return MultiAgent(str(small), str(large), brief_max_tokens=6, reason_max_tokens=64,
                      kv_cache_bytes=256 << 20, device=device, dtype="float32",
                      attention_backend=attention_backend)


def run_eval(out: Path, *, per_tier: int, latency_per_tier: int = 2, seed: int = 0, checkpoints=None,
             device: str = "cpu", attention_backend: str = "auto", progress: bool = True) -> str:
    from tqdm import tqdm

    from baton.engine.answers import normalize_answer
    from baton.engine.eval_report import write_reports
    from baton.models.synthvqa_task import TIERS, generate

    out.mkdir(parents=True, exist_ok=True)
    items = generate("heldout", per_tier * len(TIERS), seed=seed)  # tiers in turn
    timed = set(range(min(latency_per_tier, per_tier) * len(TIERS)))
    team = build_team(checkpoints, device, attention_backend)
    team.run(items[0].messages(), mode="auto")  # warm-up (allocations, kernels) outside the timings
    runs = list(dict.fromkeys(c.run for c in configs()))
    predictions = []
    bar = tqdm(total=len(runs) * (1 + len(timed)), desc="eval", disable=not progress, mininterval=2.0)
    for cfg in runs:
        kwargs = {"mode": cfg.mode, "selector": cfg.selector if cfg.selector != "-" else None,
                  "budget": cfg.budget}
        # when every item is timed alone (--quick), those lone runs give the answers too
        batch = None if len(timed) == len(items) else team.run_batch([item.messages() for item in items], **kwargs)
        bar.update()
        for idx, item in enumerate(items):
            res, seconds = None if batch is None else batch[idx], None
            if idx in timed:
                t0 = time.perf_counter()
                alone = team.run_batch([item.messages()], **kwargs)[0]
                seconds = round(time.perf_counter() - t0, 5)
                res = res or alone
                bar.update()
            predictions.append({
                "run": cfg.label, "item": idx, "tier": item.tier, "question": item.question,
                "gold": item.answer, "answer": res.answer, "path": res.mode,
                "correct": int(normalize_answer(res.answer) == normalize_answer(item.answer)),
                "seconds": seconds, "transferred_tokens": len(res.transferred_token_ids),
                "error": res.error or "",
            })
    bar.close()
    return write_reports(out, configs(), predictions, TIERS, per_tier=per_tier)
