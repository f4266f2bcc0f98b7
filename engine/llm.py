"""The offline engine: `LLM(model_dir).generate(...)` / `.chat(...)`, plus the step-level API
(`add_request`, `step`, `abort`) that the multi-agent layer drives."""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from baton.engine.block_manager import BlockManager
from baton.engine.encoder_cache import EncoderCache
from baton.errors import BatonError, InvalidRequestError
from baton.engine.host_allocator import tune_host_allocator
from baton.engine.model_runner import ModelRunner
from baton.engine.outputs import RequestOutput
from baton.engine.sampling_params import SamplingParams
from baton.engine.scheduler import Scheduler
from baton.engine.sequence import Sequence
from baton.kernels.registry import get_ops, resolve_backend
from baton.models.config import load_config
from baton.models.factory import load_model
from baton.models.processor import Processor

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_MODEL_LEN = 32768
CPU_KV_CAP_BYTES = 1 << 30


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, checkpoint_dtype: str) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        return _DTYPES.get(checkpoint_dtype, torch.bfloat16)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or 'auto', got {dtype!r}")
    return _DTYPES[dtype]


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover
        return 4 << 30


def _stats_columns(rows: list[tuple] | None) -> dict[str, list[float]] | None:
    if rows is None:
        return None
    names = ("entropy", "max_prob", "margin", "logprob")
    return {name: [r[i] for r in rows] for i, name in enumerate(names)}


def default_kv_cache_bytes(device: torch.device, bytes_per_full_seq: int, max_num_seqs: int) -> int:
    """Enough for max_num_seqs full-length sequences, capped by a share of free memory (90% on
    a GPU, where weights are already resident; on the CPU 25% and at most CPU_KV_CAP_BYTES,
    since the pool is zero-filled up front and host memory is shared with everything else)."""
    free = _available_memory(device)
    cap = int(0.9 * free) if device.type == "cuda" else min(int(0.25 * free), CPU_KV_CAP_BYTES)
    return min(bytes_per_full_seq * max_num_seqs, cap)


class LLM:
    def __init__(
        self,
        model: str | os.PathLike,
        *,
        device: str = "auto",
        dtype: str = "auto",
        attention_backend: str = "auto",
        enable_prefix_caching: bool = True,
        block_size: int = 16,
        kv_cache_bytes: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 4096,
        max_model_len: int | None = None,
        encoder_cache_bytes: int = 512 << 20,
        _model_cfg=None,
        _model=None,
        _processor=None,
    ):
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        self.model_path = Path(model) if model is not None else None
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            tune_host_allocator()
        self.model_cfg = _model_cfg if _model_cfg is not None else load_config(self.model_path)
        self.dtype = resolve_dtype(dtype, self.device, self.model_cfg.torch_dtype)
        self.backend = resolve_backend(attention_backend, self.device)
        self.ops = get_ops(self.backend)
        self.processor = _processor if _processor is not None else Processor(self.model_path)
        self.model = _model if _model is not None else load_model(
            self.model_path, self.model_cfg, self.ops, self.dtype, self.device
        )
        self.max_model_len = min(
            max_model_len or DEFAULT_MAX_MODEL_LEN, self.model_cfg.text.max_position_embeddings
        )
        self.block_size = block_size
        per_block = ModelRunner.kv_bytes_per_block(self.model_cfg, block_size, self.dtype)
        if kv_cache_bytes is None:
            kv_cache_bytes = default_kv_cache_bytes(self.device, per_block * -(-self.max_model_len // block_size),
                                                    max_num_seqs)
        num_blocks = kv_cache_bytes // per_block
        if num_blocks < 1:
            raise ValueError(f"kv_cache_bytes={kv_cache_bytes} is smaller than one KV block ({per_block} bytes)")
        self.encoder_cache = EncoderCache(encoder_cache_bytes)
        self.runner = ModelRunner(self.model, num_blocks, block_size, self.dtype, self.device, self.encoder_cache)
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching,
                                          copy_kv=self.runner.copy_kv_slots)
        # a sequence never outgrows the pool, so one running alone can always proceed
        self.max_seq_len = min(self.max_model_len, num_blocks * block_size)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.eos_token_ids = set(self.processor.eos_token_ids) | set(self.model_cfg.eos_token_ids)
        self._seqs: dict[str, Sequence] = {}
        self._counter = itertools.count()

    @classmethod
    def from_random(cls, config, *, processor_dir, seed: int = 0, **kwargs) -> "LLM":
        """An engine over random weights of a real architecture, built directly in the target
        dtype (no checkpoint on disk). `config` is a config.json dict or path; `processor_dir`
        holds the tokenizer and preprocessor_config.json used to build prompts."""
        import json

        from baton.models.config import parse_config
        from baton.models.factory import random_model

        if not isinstance(config, dict):
            config = json.loads(Path(config).read_text())
        cfg = parse_config(config)
        device = resolve_device(kwargs.pop("device", "auto"))
        dtype = resolve_dtype(kwargs.pop("dtype", "auto"), device, cfg.torch_dtype)
        backend = resolve_backend(kwargs.pop("attention_backend", "auto"), device)
        model = random_model(cfg, get_ops(backend), dtype, device, seed=seed)
        name = {v: k for k, v in _DTYPES.items()}[dtype]
        return cls(None, device=str(device), dtype=name, attention_backend=backend, _model_cfg=cfg,
                   _model=model, _processor=Processor(processor_dir), **kwargs)

    # -- requests -------------------------------------------------------------------------
    def _process(self, prompt):
        if isinstance(prompt, str):
            return self.processor.process(prompt, [])
        if isinstance(prompt, dict):
            images = prompt.get("images") or []
            if not isinstance(images, (list, tuple)):
                raise InvalidRequestError("prompt 'images' must be a list")
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids) or not ids:
                    raise InvalidRequestError("prompt_token_ids must be a non-empty list of ints")
                vocab = self.model_cfg.text.vocab_size
                if any(t < 0 or t >= vocab for t in ids):
                    raise InvalidRequestError(f"prompt_token_ids holds ids outside [0, {vocab})")
                return self.processor.process_ids(list(ids), list(images))
            text = prompt.get("prompt")
            if not isinstance(text, str):
                raise InvalidRequestError("a prompt dict needs a 'prompt' string (or 'prompt_token_ids')")
            return self.processor.process(text, list(images))
        raise InvalidRequestError(
            f"a prompt must be a str or a dict with 'prompt' and 'images', got {type(prompt).__name__}"
        )

    def add_request(self, prompt, sampling_params: SamplingParams | None = None,
                    request_id: str | None = None, record_stats: bool = False,
                    attention_probe: tuple[int, int, int] | None = None) -> str:
        """Validates and queues one request; raises InvalidRequestError (engine state untouched).
        record_stats: keep per-token entropy / max_prob / margin / logprob of the generated tokens.
        attention_probe: (query_start, key_start, key_end) over prompt positions: report the last
        layer's attention of prompt tokens [query_start, end) onto keys [key_start, key_end),
        summed over heads and queries (RequestOutput.attention_scores)."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("sampling_params must be a SamplingParams")
        request_id = request_id if request_id is not None else f"req-{next(self._counter)}"
        if request_id in self._seqs:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        processed = self._process(prompt)
        n = len(processed.token_ids)
        if n >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {n} tokens, which leaves no room under max_model_len={self.max_model_len}"
            )
        blocks = -(-(n + 1) // self.block_size)
        if blocks > self.block_manager.num_blocks:
            raise InvalidRequestError(
                f"prompt needs {blocks} KV blocks but the pool has {self.block_manager.num_blocks}; "
                "raise kv_cache_bytes"
            )
        if attention_probe is not None:
            q0, k0, k1 = attention_probe
            if not (0 <= k0 < k1 <= q0 < n):
                raise InvalidRequestError(
                    f"attention_probe {attention_probe} must satisfy 0 <= key_start < key_end <= query_start < {n}"
                )
        seq = Sequence(request_id, processed, params, self.block_size, record_stats, attention_probe)
        self._seqs[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stops a request and returns its KV blocks; None if it is unknown or already done."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq)
        seq.finish_reason = "abort"
        return self._output(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[RequestOutput]:
        """Schedules and runs one step; returns the requests that finished in it."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        now = time.perf_counter()
        for seq in batch.seqs:
            if seq.metrics.first_scheduled_time is None:
                seq.metrics.first_scheduled_time = now
        results = self.runner.execute(batch)
        for seq in batch.seqs:
            self.block_manager.commit(seq)
        finished = []
        for r in results:
            seq = r.seq
            seq.token_ids.append(r.token_id)
            if seq.logprobs is not None:
                seq.logprobs.append(r.logprobs)
            if seq.metrics.first_token_time is None:
                seq.metrics.first_token_time = time.perf_counter()
            reason = self._finish_reason(seq, r.token_id)
            if reason is not None:
                seq.finish_reason = reason
                self.scheduler.finish(seq)
                del self._seqs[seq.request_id]
                finished.append(self._output(seq))
        return finished

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if not p.ignore_eos and token in self.eos_token_ids:
            return "stop"
        if token in p.stop_token_ids:
            return "stop"
        if p.stop:
            text = self.processor.decode(seq.output_token_ids)
            for s in p.stop:
                cut = text.find(s)
                if cut != -1:
                    seq.output_text = text[:cut]
                    return "stop"
        if seq.num_output_tokens >= p.max_tokens or len(seq) >= self.max_seq_len:
            return "length"
        return None

    def _output(self, seq: Sequence) -> RequestOutput:
        seq.metrics.finished_time = time.perf_counter()
        text = seq.output_text
        if seq.finish_reason != "stop" or not seq.params.stop or not text:
            text = self.processor.decode(seq.output_token_ids)
            if seq.finish_reason == "stop" and seq.params.stop:
                cuts = [text.find(s) for s in seq.params.stop if s in text]
                text = text[:min(cuts)] if cuts else text
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.token_ids[:seq.num_prompt_tokens],
            token_ids=seq.output_token_ids,
            text=text,
            finish_reason=seq.finish_reason,
            error=seq.error,
            num_cached_tokens=seq.num_cached_tokens,
            logprobs=seq.logprobs,
            metrics=seq.metrics,
            num_vision_encoder_calls=seq.vision_encoder_calls,
            token_stats=_stats_columns(seq.token_stats),
            attention_scores=seq.probe_scores,
        )

    # -- batch API --------------------------------------------------------------------------
    def generate(self, prompts, sampling_params=None, use_tqdm: bool = False) -> list[RequestOutput]:
        """Runs prompts to completion. A list never fails as a whole: a bad request comes back
        with finish_reason="error"; a single (non-list) prompt raises InvalidRequestError."""
        single = not isinstance(prompts, list)
        prompts = [prompts] if single else prompts
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompts):
                raise InvalidRequestError(
                    f"{len(sampling_params)} sampling_params for {len(prompts)} prompts"
                )
            params_list = sampling_params
        else:
            params_list = [sampling_params] * len(prompts)
        return self._run([(p, sp) for p, sp in zip(prompts, params_list)], single, use_tqdm)

    def chat(self, messages, sampling_params=None, use_tqdm: bool = False) -> list[RequestOutput]:
        """messages: one conversation (a list of message dicts) or a list of conversations."""
        single = not (isinstance(messages, list) and messages and isinstance(messages[0], list))
        convs = [messages] if single else messages
        params_list = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(convs)
        return self._run([(("chat", c), sp) for c, sp in zip(convs, params_list)], single, use_tqdm)

    def _to_prompt(self, item):
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "chat":
            text, images = self.processor.render_chat(item[1])
            return {"prompt": text, "images": images}
        return item

    def _run(self, items, single: bool, use_tqdm: bool) -> list[RequestOutput]:
        outputs: dict[int, RequestOutput] = {}
        ids: dict[str, int] = {}
        for i, (item, params) in enumerate(items):
            try:
                rid = self.add_request(self._to_prompt(item), params)
            except BatonError as e:
                if single:
                    raise
                outputs[i] = RequestOutput(
                    request_id=f"rejected-{next(self._counter)}", prompt_token_ids=[], token_ids=[],
                    text="", finish_reason="error", error=str(e),
                )
                continue
            ids[rid] = i
        pending = set(ids)
        bar = tqdm(total=len(ids), desc="generate", disable=not use_tqdm)
        try:
            while pending and self.has_unfinished():
                for out in self.step():
                    if out.request_id in pending:
                        pending.discard(out.request_id)
                        outputs[ids[out.request_id]] = out
                        bar.update(1)
        finally:
            bar.close()
        return [outputs[i] for i in range(len(items))]

    # -- introspection ------------------------------------------------------------------------
    def stats(self) -> dict:
        bm = self.block_manager
        return {
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_free": bm.num_free_blocks,
            "kv_blocks_cached": bm.num_cached_blocks,
            "prefix_cache_queried_tokens": bm.queried_tokens,
            "prefix_cache_hit_tokens": bm.hit_tokens,
            "encoder_cache_hits": self.encoder_cache.hits,
            "encoder_cache_misses": self.encoder_cache.misses,
            "encoder_cache_entries": len(self.encoder_cache),
            "vision_encoder_calls": self.runner.vision_encoder_calls,
            "num_preemptions": self.scheduler.num_preemptions,
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
        }
