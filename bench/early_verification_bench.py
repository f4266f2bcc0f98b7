"""Early verification on the disagree path, measured with real answers (the trained SynthVQA
pair; the agreement hook turns early verification off, so random weights cannot show it).

Two teams over the same checkpoints, one with `early_verification=True` (the default: once the
two brief answers are settled and differ, the briefs are cut short and the small model starts
reasoning) and one without. Every held-out item runs alone on each team, alternating which
team goes first. Reported over the items both teams sent down the disagree path: mean
seconds per request, how many were verified early, and the team's own estimate of the time
saved (the cut briefs' remaining tokens at their pace).

    python bench/early_verification_bench.py [--per-tier 10] [--brief-tokens 6]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_flags, print_table  # noqa: E402
from baton import MultiAgent  # noqa: E402
from baton.models.synthvqa_task import TIERS, generate, trained_pair  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-tier", type=int, default=10)
    ap.add_argument("--brief-tokens", type=int, default=6)
    ap.add_argument("--checkpoints", default=None, help="folder with synthvqa-small and synthvqa-large")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    small, large = trained_pair(args.checkpoints)
    teams = {on: MultiAgent(str(small), str(large), brief_max_tokens=args.brief_tokens, reason_max_tokens=64,
                            kv_cache_bytes=256 << 20, device="cpu", dtype="float32", early_verification=on)
             for on in (True, False)}
    items = generate("heldout", args.per_tier * len(TIERS), seed=5)
    for team in teams.values():
        team.run(items[0].messages(), mode="auto")  # warm-up
    results = {True: [], False: []}
    for i, item in enumerate(items):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            results[on].append(teams[on].run(item.messages(), mode="auto"))
    both = [i for i in range(len(items))
            if all(results[on][i].mode != "auto:agree" for on in (True, False))]
    print(f"CPU flags: {cpu_flags()}; threads {args.threads}; {len(items)} held-out items, "
          f"brief limit {args.brief_tokens} tokens; disagree path on both teams: {len(both)}")
    rows = []
    for on in (True, False):
        res = [results[on][i] for i in both]
        rows.append(["on" if on else "off", len(res), f"{statistics.mean(r.seconds for r in res) * 1e3:.1f}",
                     sum(r.verified_early for r in res),
                     f"{statistics.mean(r.early_saved_seconds for r in res) * 1e3:.1f}"])
    print_table(["early verification", "requests", "mean ms", "verified early", "estimated saving ms"], rows)
    on, off = (statistics.mean(results[k][i].seconds for i in both) for k in (True, False))
    print(f"\nmeasured saving on the disagree path: {(off - on) * 1e3:.1f} ms per request ({(off - on) / off:.1%})")


if __name__ == "__main__":
    main()
