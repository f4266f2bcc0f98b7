"""Runs one scheduled step: builds the flat batch tensors, encodes images not in the encoder
cache, runs the model over the paged KV cache and samples the sequences that reached their
last token."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from baton.engine.encoder_cache import EncoderCache
from baton.engine.sampler import Sampler
from baton.engine.scheduler import ScheduledBatch
from baton.engine.sequence import Sequence
from baton.kernels import cpu_routing
from baton.models.attention import AttentionMetadata
from baton.models.interface import StepInputs, VisualFeatures


@dataclass
class StepResult:
    seq: Sequence
    token_id: int
    logprobs: dict | None
    token_stats: tuple[float, float, float, float] | None = None  # SamplingParams(token_stats=True)
    error: str | None = None  # this sequence failed (token_id is then meaningless)


NON_FINITE = "the model produced non-finite logits"


@dataclass(frozen=True)
class StepTiming:
    """One executed step, for online cost calibration (engine/latency_router.py): the model's
    seconds (the vision encoder excluded), the key count of each decoding sequence, and (new
    tokens, cached prefix) of each prefilling one. first_use: the step also chose a CPU kernel
    path for a new shape (kernels.cpu_routing), so its seconds overstate the model's."""

    seconds: float
    decode_contexts: tuple[int, ...]
    prefills: tuple[tuple[int, int], ...]
    first_use: bool = False


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device,
                 encoder_cache: EncoderCache):
        self.model = model
        self.device = device
        self.block_size = block_size
        t = model.cfg.text
        self.kv_cache = torch.zeros(
            t.num_hidden_layers, 2, num_blocks, block_size, t.num_key_value_heads, t.head_dim,
            dtype=dtype, device=device,
        )
        self.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1]) for i in range(t.num_hidden_layers)]
        self.encoder_cache = encoder_cache
        self.sampler = Sampler()
        self.vision_encoder_calls = 0
        self.static_decode = None  # engine.static_decode.StaticDecode: decode-only steps on static buffers
        # the latest steps' timings; steps_executed counts all, so a reader can tell what is new
        self.recent_steps: deque[StepTiming] = deque(maxlen=512)
        self.steps_executed = 0

    @staticmethod
    def kv_bytes_per_block(model_cfg, block_size: int, dtype: torch.dtype) -> int:
        t = model_cfg.text
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * t.num_hidden_layers * block_size * t.num_key_value_heads * t.head_dim * elem

    def copy_kv_slots(self, src: int, dst: int, num_tokens: int) -> None:
        """K/V of the first num_tokens slots of block src into block dst, every layer (partial
        prefix reuse). Queued on the device like any kernel, so it lands before the next step
        writes into either block."""
        self.kv_cache[:, :, dst, :num_tokens].copy_(self.kv_cache[:, :, src, :num_tokens])

    # -- vision -------------------------------------------------------------------------
    def _encode_missing(self, batch: ScheduledBatch) -> dict[str, VisualFeatures]:
        """Visual features of every image whose tokens are computed this step; the misses are
        encoded together in one vision-tower call."""
        needed: dict[str, VisualFeatures | None] = {}
        owners: dict[str, list[Sequence]] = {}
        pixels = {}  # content hash -> the ImageInput to encode
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            for image, span in zip(seq.images, seq.image_spans):
                if span.offset < end and span.end > start:
                    h = span.content_hash
                    if h not in needed:
                        needed[h] = self.encoder_cache.get(h)
                    if needed[h] is None:
                        owners.setdefault(h, []).append(seq)
                        pixels.setdefault(h, image)
        missing = [h for h, out in needed.items() if out is None]
        if missing:
            images = [pixels[h] for h in missing]
            patches = torch.cat([im.pixel_values for im in images]).to(self.device)
            grids = [tuple(im.grid_thw) for im in images]
            t0 = time.perf_counter()
            features = self.model.encode_images(patches, grids)
            elapsed = time.perf_counter() - t0
            for h, out in zip(missing, features):
                needed[h] = out
                self.encoder_cache.put(h, out)
            self.vision_encoder_calls += len(missing)
            for h in missing:
                for seq in set(owners[h]):
                    seq.vision_encoder_calls += 1
                    seq.metrics.vision_encoder_time += elapsed
        return needed

    # -- batch tensors ----------------------------------------------------------------------
    def _prepare(self, batch: ScheduledBatch, images: dict[str, VisualFeatures]):
        ids, pos, slots = [], [], []
        vis_rows, vis_feats = [], []
        extend_tables, cu_q, prefix_lens = [], [0], []
        decode_tables, context_lens = [], []
        logits_rows, sample_seqs = [], []
        row = 0
        bs = self.block_size
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            ids.extend(seq.token_ids[start:end])
            pos.append(seq.positions(start, end))
            table = seq.block_table
            slots.extend(table[t // bs] * bs + t % bs for t in range(start, end))
            for span in seq.image_spans:
                a, b = max(start, span.offset), min(end, span.end)
                if a < b:
                    vis_rows.append(torch.arange(row + a - start, row + b - start))
                    vis_feats.append(images[span.content_hash].rows(a - span.offset, b - span.offset))
            if n == 1:
                decode_tables.append(table)
                context_lens.append(end)
            else:
                extend_tables.append(table)
                cu_q.append(cu_q[-1] + n)
                prefix_lens.append(start)
            row += n
            if end == len(seq):
                logits_rows.append(row - 1)
                sample_seqs.append(seq)

        dev = self.device

        def tables(rows):
            width = max(len(r) for r in rows)
            return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32, device=dev)

        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            num_prefill_tokens=cu_q[-1],
        )
        if extend_tables:
            meta.cu_seqlens_q = torch.tensor(cu_q, dtype=torch.int32, device=dev)
            meta.prefix_lens = torch.tensor(prefix_lens, dtype=torch.int32, device=dev)
            meta.prefill_block_tables = tables(extend_tables)
            meta.max_seqlen_q = max(b - a for a, b in zip(cu_q, cu_q[1:]))
        if decode_tables:
            meta.context_lens = torch.tensor(context_lens, dtype=torch.int32, device=dev)
            meta.decode_block_tables = tables(decode_tables)
        visual = None
        if vis_rows:
            visual = (torch.cat(vis_rows).to(dev), vis_feats)
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
        positions = torch.cat(pos, dim=1).to(dev)
        return input_ids, positions, meta, visual, logits_rows, sample_seqs

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[StepResult]:
        """Samples every row with finite logits; a row with a NaN or inf fails its sequence
        alone instead of decoding garbage (argmax of NaN is token 0)."""
        finite = torch.isfinite(logits).all(dim=-1)
        if bool(finite.all()):
            out = self.sampler(logits, seqs)
            return [StepResult(*r) for r in zip(seqs, out.token_ids, out.logprobs, out.token_stats)]
        ok = finite.nonzero().flatten().tolist()
        results = {i: StepResult(seq, -1, None, error=NON_FINITE) for i, seq in enumerate(seqs)}
        if ok:
            out = self.sampler(logits[ok], [seqs[i] for i in ok])
            for i, r in zip(ok, zip(out.token_ids, out.logprobs, out.token_stats)):
                results[i] = StepResult(seqs[i], *r)
        return [results[i] for i in range(len(seqs))]

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> list[StepResult]:
        """Runs the step and samples; the scheduler's update_from_output then advances the
        sequences. Returns one result per sampled sequence."""
        images = self._encode_missing(batch)
        routed = cpu_routing.first_uses()
        if self.static_decode is not None and self.static_decode.accepts(batch):
            t0 = time.perf_counter()
            hidden, logits_rows, sample_seqs = self.static_decode.run(batch)
        else:  # prefills, mixed steps (and every step without static decode) run eagerly
            input_ids, positions, meta, visual, logits_rows, sample_seqs = self._prepare(batch, images)
            t0 = time.perf_counter()
            visual_rows, visual_feats = visual if visual is not None else (None, [])
            hidden = self.model(StepInputs(input_ids, positions, meta, self.kv_caches, visual_rows, visual_feats))
        results = []
        if sample_seqs:
            logits = self.model.compute_logits(hidden[logits_rows])
            results = self._sample(logits, sample_seqs)
        elapsed = time.perf_counter() - t0
        contexts, prefills = [], []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            # prefill until the first token, or while recomputing a preempted prompt
            if seq.num_output_tokens == 0 or seq.num_computed_tokens + n < seq.num_prompt_tokens:
                seq.metrics.prefill_time += elapsed
                prefills.append((n, seq.num_computed_tokens))
            else:
                seq.metrics.decode_time += elapsed
                seq.metrics.decode_steps += 1
                seq.metrics.decode_batch_total += len(batch.seqs)
                contexts.append(seq.num_computed_tokens + n)
        self.recent_steps.append(StepTiming(elapsed, tuple(contexts), tuple(prefills),
                                            first_use=cpu_routing.first_uses() != routed))
        self.steps_executed += 1
        return results
