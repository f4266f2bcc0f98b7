"""Turns last-position logits into next tokens: greedy, temperature, top-k, top-p, per-request
seeds, and the log-probabilities requested with `logprobs=k`."""
from __future__ import annotations

import torch

from baton.engine.sequence import Sequence


class Sampler:
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[dict | None]]:
        """logits float32 [B, V], one row per sequence -> (token ids, logprob dicts or None)."""
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if sampled:
            idx = torch.tensor(sampled, device=logits.device)
            tokens[idx] = self._sample(logits[idx], [seqs[i] for i in sampled])
        tokens_list = tokens.tolist()
        logprobs: list[dict | None] = [None] * len(seqs)
        wanted = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        if wanted:
            lp = torch.log_softmax(logits[wanted], dim=-1)  # raw distribution, before any warping
            for row, i in enumerate(wanted):
                k = seqs[i].params.logprobs
                entry = {}
                if k:
                    top = torch.topk(lp[row], k)
                    entry = dict(zip(top.indices.tolist(), top.values.tolist()))
                entry[tokens_list[i]] = lp[row, tokens_list[i]].item()
                logprobs[i] = entry
        return tokens_list, logprobs

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
