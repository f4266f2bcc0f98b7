"""Turns last-position logits into next tokens: greedy, temperature, top-k, top-p, per-request
seeds, the log-probabilities requested with `logprobs=k` and the per-token statistics
requested with `token_stats=True`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from baton.engine.sequence import Sequence

TokenStatsRow = tuple[float, float, float, float]  # entropy, max_prob, margin, logprob


@dataclass
class SamplerOutput:
    """One entry per logits row: the next token, its logprob dict and its statistics (None
    for rows that did not ask)."""

    token_ids: list[int]
    logprobs: list[dict | None]
    token_stats: list[TokenStatsRow | None]


class Sampler:
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits float32 [B, V], one row per sequence."""
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if sampled:
            idx = torch.tensor(sampled, device=logits.device)
            tokens[idx] = self._sample(logits[idx], [seqs[i] for i in sampled])
        tokens_list = tokens.tolist()
        return SamplerOutput(tokens_list, self._logprobs(logits, tokens_list, seqs),
                             self._token_stats(logits, tokens_list, seqs))

    @staticmethod
    def _logprobs(logits: torch.Tensor, tokens: list[int], seqs: list[Sequence]) -> list[dict | None]:
        out: list[dict | None] = [None] * len(seqs)
        wanted = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        if wanted:
            lp = torch.log_softmax(logits[wanted], dim=-1)  # raw distribution, before any warping
            for row, i in enumerate(wanted):
                k = seqs[i].params.logprobs
                entry = {}
                if k:
                    top = torch.topk(lp[row], k)
                    entry = dict(zip(top.indices.tolist(), top.values.tolist()))
                entry[tokens[i]] = lp[row, tokens[i]].item()
                out[i] = entry
        return out

    @staticmethod
    def _token_stats(logits: torch.Tensor, tokens: list[int], seqs: list[Sequence]) -> list[TokenStatsRow | None]:
        out: list[TokenStatsRow | None] = [None] * len(seqs)
        wanted = [i for i, s in enumerate(seqs) if s.params.token_stats]
        if wanted:
            from baton.kernels import token_stats  # native op: loaded only when a request asks

            ids = torch.tensor([tokens[i] for i in wanted], dtype=torch.long, device=logits.device)
            st = token_stats(logits[wanted], ids)  # raw distribution, like logprobs
            rows = torch.stack([st.entropy, st.max_prob, st.margin, st.logprob], dim=1).tolist()
            for i, row in zip(wanted, rows):
                out[i] = tuple(row)
        return out

    @staticmethod
    def _sample(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        temps = torch.tensor([s.params.temperature for s in seqs], dtype=logits.dtype, device=logits.device)
        logits = logits / temps[:, None]
        top_ks = [s.params.top_k for s in seqs]
        if any(k != -1 for k in top_ks):
            vocab = logits.shape[-1]
            ks = torch.tensor([vocab if k == -1 else min(k, vocab) for k in top_ks], device=logits.device)
            kth = logits.sort(dim=-1, descending=True).values.gather(1, (ks - 1)[:, None])
            logits = logits.masked_fill(logits < kth, float("-inf"))
        top_ps = torch.tensor([s.params.top_p for s in seqs], dtype=logits.dtype, device=logits.device)
        if (top_ps < 1).any():
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            # drop a token when the mass strictly before it already reaches top_p (keeps >= 1)
            drop = (probs.cumsum(dim=-1) - probs) >= top_ps[:, None]
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
        probs = logits.softmax(dim=-1)
        out = torch.empty(len(seqs), dtype=torch.long, device=logits.device)
        for i, s in enumerate(seqs):
            if s.params.seed is not None and s.generator is None:
                s.generator = torch.Generator(device=logits.device).manual_seed(s.params.seed)
            # exponential race (Gumbel-max equivalent); each request draws from its own generator
            q = torch.empty_like(probs[i]).exponential_(generator=s.generator)
            out[i] = (probs[i] / q).argmax()
        return out
