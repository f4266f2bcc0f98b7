"""Decode-only steps on preallocated buffers, replayed as CUDA graphs per batch-size bucket.

A decode step has one token per sequence, so its tensors have one shape per batch size. The
runner copies the step's token ids, positions, slot mapping, block tables and context lengths
into static buffers, pads the batch up to the next bucket and runs the model on views of them.
On CUDA each bucket's forward is captured once (torch.cuda.CUDAGraph) and replayed: a replay
launches the whole decoder at once instead of a few hundred kernels from Python. On the CPU
the same code runs without capture, so CPU tests check it gives the eager path's tokens.

Padding rows store nothing (slot -1) and attend to nothing (context length 0: a zero row).
Inside the captured region nothing may copy between host and device or read a device value
on the host: the inputs are copied before the replay, logits and sampling run after it.
The torch backend's CUDA paths do read lengths on the host (`.tolist()` in the reference
decode attention, boolean indexing in the reference KV store), so capture needs "triton".
"""
from __future__ import annotations

import logging

import torch

from baton.errors import InvalidRequestError
from baton.models.attention import AttentionMetadata
from baton.models.interface import StepInputs

logger = logging.getLogger("baton")


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8, up to the first bucket >= max_batch."""
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_batch:
        sizes.append(sizes[-1] + 8)
    return [s for s in sizes if s < max_batch] + [next(s for s in sizes if s >= max_batch)]


def resolve_cuda_graphs(option, device: torch.device, backend: str) -> bool:
    """Whether LLM(use_cuda_graphs=option) runs decode on static buffers (captured on CUDA).

    "auto": on CUDA with the triton backend, else off. True: on; captured on CUDA (where the
    triton backend is then required), uncaptured on the CPU. False: off (eager decode)."""
    if not (isinstance(option, bool) or option == "auto"):
        raise InvalidRequestError(f"use_cuda_graphs must be 'auto', True or False, got {option!r}")
    on_cuda = device.type == "cuda"
    if option == "auto":
        return on_cuda and backend == "triton"
    if option and on_cuda and backend != "triton":
        raise InvalidRequestError(
            "use_cuda_graphs=True on CUDA needs attention_backend='triton': the torch backend reads "
            "sequence lengths on the host, which a captured graph cannot")
    return option


def static_decode_for(runner, max_num_seqs: int, max_seq_len: int) -> "StaticDecode":
    """Static decode over a runner's model and KV cache; captured when the runner is on CUDA."""
    return StaticDecode(runner.model, runner.kv_caches, max_num_seqs=max_num_seqs,
                        max_blocks_per_seq=-(-max_seq_len // runner.block_size), block_size=runner.block_size,
                        device=runner.device, capture=runner.device.type == "cuda")


class StaticDecode:
    """Static input buffers for up to `max_num_seqs` decoding sequences of at most
    `max_blocks_per_seq` KV blocks each, and one captured graph per bucket (CUDA only)."""

    def __init__(self, model, kv_caches, *, max_num_seqs: int, max_blocks_per_seq: int, block_size: int,
                 device: torch.device, capture: bool):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.capture = capture
        self.capture_error: str | None = None  # why capture was turned off, if it failed
        self.buckets = bucket_sizes(max_num_seqs)
        b, dev = self.buckets[-1], device
        self.max_blocks = max_blocks_per_seq
        self.input_ids = torch.zeros(b, dtype=torch.long, device=dev)
        self.positions: torch.Tensor | None = None  # [R, b]: R (position rows) is known at the first step
        self.slot_mapping = torch.full((b,), -1, dtype=torch.long, device=dev)
        self.block_tables = torch.zeros(b, max_blocks_per_seq, dtype=torch.int32, device=dev)
        self.context_lens = torch.zeros(b, dtype=torch.int32, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self.steps = 0  # decode steps run here (tests and benches read it)

    def accepts(self, batch) -> bool:
        """Decode-only: one new token per sequence, none of them an image token, every block
        table within the static width."""
        if len(batch.seqs) > self.buckets[-1] or any(n != 1 for n in batch.num_new_tokens):
            return False
        for seq in batch.seqs:
            t = seq.num_computed_tokens
            if len(seq.block_table) > self.max_blocks or any(s.offset <= t < s.end for s in seq.image_spans):
                return False
        return True

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def run(self, batch) -> tuple[torch.Tensor, list[int], list]:
        """(hidden [n, hidden] of the step's n tokens, rows to sample, their sequences)."""
        n = len(batch.seqs)
        b = self.bucket(n)
        ids, pos, slots, lens, tables = [], [], [], [], []
        logits_rows, sample_seqs = [], []
        bs = self.block_size
        for i, seq in enumerate(batch.seqs):
            t = seq.num_computed_tokens
            ids.append(seq.token_ids[t])
            pos.append(seq.positions(t, t + 1))
            slots.append(seq.block_table[t // bs] * bs + t % bs)
            lens.append(t + 1)
            tables.append(seq.block_table)
            if t + 1 == len(seq):
                logits_rows.append(i)
                sample_seqs.append(seq)
        positions = torch.cat(pos, dim=1)
        if self.positions is None:
            self.positions = torch.zeros(positions.shape[0], self.buckets[-1], dtype=torch.long, device=self.device)
        width = max(len(t) for t in tables)
        # columns past a sequence's blocks may hold an earlier step's entries: kernels never read them
        self.block_tables[:n, :width].copy_(torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                                         dtype=torch.int32))
        self.input_ids[:n].copy_(torch.tensor(ids, dtype=torch.long))
        self.positions[:, :n].copy_(positions)
        self.slot_mapping[:n].copy_(torch.tensor(slots, dtype=torch.long))
        self.context_lens[:n].copy_(torch.tensor(lens, dtype=torch.int32))
        if n < b:  # padding rows: store nothing, attend to nothing
            self.input_ids[n:b].zero_()
            self.positions[:, n:b].zero_()
            self.slot_mapping[n:b].fill_(-1)
            self.context_lens[n:b].zero_()
        self.steps += 1
        if self.capture:
            graph = self.graphs.get(b) or self._capture(b)
            if graph is not None:
                graph[0].replay()
                return graph[1][:n], logits_rows, sample_seqs
        return self._forward(b)[:n], logits_rows, sample_seqs

    def _forward(self, b: int) -> torch.Tensor:
        meta = AttentionMetadata(slot_mapping=self.slot_mapping[:b], num_prefill_tokens=0,
                                 context_lens=self.context_lens[:b], decode_block_tables=self.block_tables[:b])
        return self.model(StepInputs(self.input_ids[:b], self.positions[:, :b], meta, self.kv_caches))

    def _capture(self, b: int):
        """Captures bucket b on the step's own inputs (the warm-up run writes the same K/V the
        replay then writes again). On failure, capture is turned off for good and the static
        buffers run uncaptured; the reason stays in capture_error."""
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._forward(b)  # compiles the Triton kernels and warms the allocator outside capture
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another engine stepping in another thread does not break this capture
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = self._forward(b)
            self._pool = graph.pool()
        except Exception as e:  # noqa: BLE001 - a failed capture must not fail requests
            self.capture, self.capture_error = False, f"{type(e).__name__}: {e}"
            self.graphs.clear()
            logger.warning("CUDA graph capture failed, decoding without it: %s", self.capture_error)
            return None
        self.graphs[b] = (graph, out)
        return self.graphs[b]
