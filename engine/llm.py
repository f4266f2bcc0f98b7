"""The offline engine: `LLM(model_dir).generate(...)` / `.chat(...)`, plus the step-level API
(`add_request`, `step`, `abort`) that the multi-agent layer drives."""
from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Hashable

import torch
from tqdm.auto import tqdm

from baton.engine.block_manager import BlockManager
from baton.engine.detokenizer import IncrementalDetokenizer
from baton.engine.encoder_cache import EncoderCache
from baton.errors import BatonError, InvalidRequestError
from baton.engine.host_allocator import release_free_memory, tune_host_allocator
from baton.engine.model_runner import ModelRunner
from baton.engine.options import check_llm_options
from baton.engine.output_router import DEFAULT_OWNER, OutputRouter
from baton.engine.outputs import RequestOutput
from baton.engine.sampling_params import SamplingParams
from baton.engine.scheduler import Scheduler
from baton.engine.sequence import Sequence
from baton.engine.static_decode import resolve_cuda_graphs, static_decode_for
from baton.kernels.cpu_routing import cpu_kernel_stats
from baton.kernels.registry import get_ops, resolve_backend
from baton.models import native_decode
from baton.models.config import load_config
from baton.models.factory import load_model
from baton.models.huge_pages import huge_page_share
from baton.models.image_io import DEFAULT_MAX_IMAGE_PIXELS
from baton.models.processor import Processor

logger = logging.getLogger("baton")


def _locked(method):
    """One engine, many threads: entry points take the engine's (re-entrant) lock, so
    add_request / abort from any thread interleave safely with whichever thread steps."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_MODEL_LEN = 32768
CPU_KV_CAP_BYTES = 1 << 30


def resolve_device(device: str) -> torch.device:
    """"auto", "cpu", "cuda" or "cuda:N" (or a torch.device); InvalidRequestError naming device."""
    name = str(device) if isinstance(device, (str, torch.device)) else None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    index = name[5:] if name and name.startswith("cuda:") else None
    if name not in ("cpu", "cuda") and not (index and index.isdigit()):
        raise InvalidRequestError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidRequestError(f"device={name!r} requested but torch sees no CUDA device")
    if index and int(index) >= torch.cuda.device_count():
        raise InvalidRequestError(f"device={name!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def resolve_dtype(dtype: str, device: torch.device, checkpoint_dtype: str) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        return _DTYPES.get(checkpoint_dtype, torch.bfloat16)
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise InvalidRequestError(f"dtype must be one of {', '.join(_DTYPES)} or 'auto', got {dtype!r}")
    return _DTYPES[dtype]


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover
        return 4 << 30


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
        check_weights: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        use_cuda_graphs: bool | str = "auto",
        _model_cfg=None,
        _model=None,
        _processor=None,
    ):
        """Bad options raise InvalidRequestError naming the option. check_weights: refuse a
        checkpoint with a NaN or inf weight (CheckpointError naming the tensor).
        max_image_pixels: images with more pixels (width * height) are refused before
        decoding; None lifts the cap. use_cuda_graphs: decode-only steps on static buffers,
        replayed as CUDA graphs ("auto": on CUDA with the triton backend; True on the CPU runs
        the same static path uncaptured; see engine/static_decode.py)."""
        check_llm_options(block_size=block_size, kv_cache_bytes=kv_cache_bytes, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                          encoder_cache_bytes=encoder_cache_bytes, enable_prefix_caching=enable_prefix_caching,
                          check_weights=check_weights, max_image_pixels=max_image_pixels)
        self.model_path = Path(model) if model is not None else None
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            tune_host_allocator()
        self.model_cfg = _model_cfg if _model_cfg is not None else load_config(self.model_path)
        self.dtype = resolve_dtype(dtype, self.device, self.model_cfg.torch_dtype)
        self.backend = resolve_backend(attention_backend, self.device)
        self.ops = get_ops(self.backend)
        self.use_cuda_graphs = resolve_cuda_graphs(use_cuda_graphs, self.device, self.backend)
        self.processor = _processor if _processor is not None else Processor(self.model_path)
        self.processor.max_image_pixels = max_image_pixels
        self.processor.release_memory = release_free_memory  # a large image's buffers go back to the OS
        self.processor.check_vision_config(self.model_cfg.vision)  # e.g. a from_random config
        self.model = _model if _model is not None else load_model(
            self.model_path, self.model_cfg, self.ops, self.dtype, self.device, check_weights
        )
        self._huge_share: float | None = None
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
            raise InvalidRequestError(
                f"kv_cache_bytes={kv_cache_bytes} is smaller than one KV block ({per_block} bytes)")
        self.encoder_cache = EncoderCache(encoder_cache_bytes)
        self.runner = ModelRunner(self.model, num_blocks, block_size, self.dtype, self.device, self.encoder_cache)
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching,
                                          copy_kv=self.runner.copy_kv_slots)
        # a sequence never outgrows the pool, so one running alone can always proceed
        self.max_seq_len = min(self.max_model_len, num_blocks * block_size)
        if self.use_cuda_graphs:
            self.runner.static_decode = static_decode_for(self.runner, max_num_seqs, self.max_seq_len)
        self.eos_token_ids = set(self.processor.eos_token_ids) | set(self.model_cfg.eos_token_ids)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens,
                                   eos_token_ids=self.eos_token_ids, max_seq_len=self.max_seq_len)
        self._seqs: dict[str, Sequence] = {}
        self._detoks: dict[str, IncrementalDetokenizer] = {}
        self._router = OutputRouter()
        self._lock = threading.RLock()
        # tests: called with each scheduled batch before the model runs; raising fails the step
        self.fault_hook = None
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
                    request_id: str | None = None, *, owner: Hashable = DEFAULT_OWNER) -> str:
        """Validates and queues one request; raises InvalidRequestError (engine state untouched).
        Its outputs go to `owner`: `step()` returns the default owner's; a caller driving its own
        requests on a shared engine passes its own key to both calls, then `release(owner)`."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("sampling_params must be a SamplingParams")
        vocab = self.model_cfg.text.vocab_size
        if params.logprobs is not None and params.logprobs > vocab:
            raise InvalidRequestError(
                f"SamplingParams.logprobs={params.logprobs} exceeds the vocabulary size {vocab}")
        # tokenising and image preprocessing run outside the engine lock, beside the steps
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
        return self._enqueue(processed, params, request_id, owner)

    @_locked
    def _enqueue(self, processed, params: SamplingParams, request_id: str | None, owner: Hashable) -> str:
        if request_id is None:
            request_id = self._auto_id()
        if request_id in self._seqs:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        seq = Sequence(request_id, processed, params, self.block_size)
        self._seqs[request_id] = seq
        self._detoks[request_id] = IncrementalDetokenizer(self.processor.decode, params.stop)
        self._router.register(request_id, owner)
        self.scheduler.add(seq)
        return request_id

    def _auto_id(self) -> str:
        # skips ids a caller chose for requests still in flight
        while (rid := f"req-{next(self._counter)}") in self._seqs:
            pass
        return rid

    @_locked
    def score(self, prompt, query_start: int, key_start: int, key_end: int) -> torch.Tensor:
        """float32 [key_end - key_start] (CPU): the last layer's attention of prompt tokens
        [query_start, end) onto keys [key_start, key_end), summed over heads and queries. The
        prompt is as add_request takes it. Reuses cached prefix blocks, holds none afterwards
        and leaves requests in flight alone. InvalidRequestError unless
        0 <= key_start < key_end <= query_start < prompt length."""
        from baton.engine.attention_probe import probe_attention

        return probe_attention(self.runner, self.block_manager, self._process(prompt), query_start,
                               key_start, key_end, max_len=self.max_seq_len)

    @_locked
    def abort(self, request_id: str) -> RequestOutput | None:
        """Stops a request and returns its KV blocks; None if it is unknown or already done.
        The returned output (finish_reason "abort") also reaches the request's owner when that
        is another caller (a generate call or stream in progress)."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq)
        seq.finish_reason = "abort"
        out = self._output(seq)
        owner = self._router.owner_of(request_id)
        self._router.forget(request_id) if owner == DEFAULT_OWNER else self._router.post(out)
        return out

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    @_locked
    def step(self, owner: Hashable = DEFAULT_OWNER) -> list[RequestOutput]:
        """Runs one engine step (when there is work) and returns the outputs waiting for
        `owner`: by default the requests submitted with add_request. Each request that got a
        token has one output (out.delta, out.text and out.token_ids so far; out.finished);
        outputs of other owners' requests are kept for them."""
        if self.scheduler.has_work():
            self._engine_step()
        return self._router.take(owner)

    @_locked
    def _engine_step(self) -> None:
        """One scheduled step. If building the batch, the model or the sampler raises, every
        request of the step ends with finish_reason "error" and its blocks are freed; requests
        outside the step are untouched and the engine keeps serving."""
        batch = self.scheduler.schedule()
        if not batch:
            return
        now = time.perf_counter()
        for seq in batch.seqs:
            if seq.metrics.first_scheduled_time is None:
                seq.metrics.first_scheduled_time = now
        try:
            if self.fault_hook is not None:
                self.fault_hook(batch)
            results = self.runner.execute(batch)
        except Exception as e:  # noqa: BLE001 - whatever broke, it breaks this step's requests only
            logger.exception("engine step failed; failing its %d requests", len(batch.seqs))
            for seq in batch.seqs:
                self.scheduler.fail(seq, f"engine step failed: {type(e).__name__}: {e}")
                self._publish(seq)
            return
        self.scheduler.update_from_output(batch, results)
        now = time.perf_counter()
        for r in results:
            seq = r.seq
            if r.error is None:
                if seq.metrics.first_token_time is None:
                    seq.metrics.first_token_time = now
                if self._detoks[seq.request_id].add(r.token_id) and seq.finish_reason is None:
                    seq.finish_reason = "stop"  # a stop string: the scheduler only sees token ids
                    self.scheduler.finish(seq)
            self._publish(seq)

    def _publish(self, seq: Sequence) -> None:
        if seq.finish_reason is not None:
            self._seqs.pop(seq.request_id, None)
        self._router.post(self._output(seq))

    @_locked
    def _pump(self, owner: Hashable) -> list[RequestOutput]:
        """The outputs waiting for `owner`, after running a step if there were none."""
        if not self._router.has_pending(owner):
            if not self.scheduler.has_work():
                raise BatonError("an owner waits on requests the engine no longer holds")  # pragma: no cover
            self._engine_step()
        return self._router.take(owner)

    def _output(self, seq: Sequence) -> RequestOutput:
        """This step's output of `seq`: the text and tokens so far, the new delta, and on the
        last one the finish reason, metrics and (if asked) per-token statistics."""
        finished = seq.finish_reason is not None
        detok = self._detoks[seq.request_id]
        if finished:
            detok.flush()
            seq.metrics.finished_time = time.perf_counter()
            del self._detoks[seq.request_id]
        delta = detok.delta(finished)
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.token_ids[:seq.num_prompt_tokens],
            token_ids=seq.output_token_ids,
            text=detok.emitted_text,
            finish_reason=seq.finish_reason,
            error=seq.error,
            num_cached_tokens=seq.num_cached_tokens,
            logprobs=None if seq.logprobs is None else list(seq.logprobs),
            metrics=seq.metrics,
            num_vision_encoder_calls=seq.vision_encoder_calls,
            # so far (a streaming selector reads them): copies of the sequence's columns
            token_stats=None if seq.token_stats is None else {k: list(v) for k, v in seq.token_stats.items()},
            delta=delta,
        )

    # -- streaming -----------------------------------------------------------------------------
    def stream(self, prompt, sampling_params: SamplingParams | None = None, request_id: str | None = None):
        """Generator of one request's outputs, one per step that gave it a token: `out.delta`
        (new text), `out.text` (so far), `out.finished`. Closing the generator early aborts
        the request. Other callers' requests on this engine keep running and keep their
        outputs. Raises InvalidRequestError for a bad request before yielding anything."""
        owner = object()
        rid = self._submit(prompt, sampling_params, request_id, owner)  # validates now, not on next()
        return self._follow(rid, owner)

    def _follow(self, rid: str, owner: Hashable):
        done = False
        try:
            while not done:
                for out in self._pump(owner):
                    done = out.finished
                    yield out
        finally:
            self.release(owner)  # closed early: aborts the request

    def _submit(self, prompt, params, request_id, owner: Hashable) -> str:
        return self.add_request(prompt, params, request_id, owner=owner)

    @_locked
    def release(self, owner: Hashable) -> None:
        """An owner is done: its unfinished requests are aborted and its mailbox dropped."""
        for rid in self._router.requests_of(owner):
            self.abort(rid)
        self._router.close(owner)

    # -- batch API --------------------------------------------------------------------------
    def generate(self, prompts, sampling_params=None, use_tqdm: bool = False) -> list[RequestOutput]:
        """Runs prompts to completion. A list never fails as a whole: a bad request comes back
        with finish_reason="error"; a single (non-list) prompt raises InvalidRequestError.
        Requests other callers have in flight keep running and keep their outputs."""
        single = not isinstance(prompts, list)
        prompts = [prompts] if single else prompts
        params_list = self._params_list(sampling_params, len(prompts), "prompts")
        return self._run([(p, sp) for p, sp in zip(prompts, params_list)], single, use_tqdm)

    def chat(self, messages, sampling_params=None, use_tqdm: bool = False) -> list[RequestOutput]:
        """messages: one conversation (a list of message dicts) or a list of conversations."""
        single = not (isinstance(messages, list) and messages and isinstance(messages[0], list))
        convs = [messages] if single else messages
        params_list = self._params_list(sampling_params, len(convs), "conversations")
        return self._run([(("chat", c), sp) for c, sp in zip(convs, params_list)], single, use_tqdm)

    @staticmethod
    def _params_list(sampling_params, n: int, what: str) -> list:
        if isinstance(sampling_params, list):
            if len(sampling_params) != n:
                raise InvalidRequestError(f"{len(sampling_params)} sampling_params for {n} {what}")
            return sampling_params
        return [sampling_params] * n

    def _to_prompt(self, item):
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "chat":
            text, images = self.processor.render_chat(item[1])
            return {"prompt": text, "images": images}
        return item

    def _run(self, items, single: bool, use_tqdm: bool) -> list[RequestOutput]:
        owner = object()
        outputs: dict[int, RequestOutput] = {}
        ids: dict[str, int] = {}
        try:
            for i, (item, params) in enumerate(items):
                try:
                    rid = self._submit(self._to_prompt(item), params, None, owner)
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
            with tqdm(total=len(ids), desc="generate", disable=not use_tqdm) as bar:
                while pending:
                    for out in self._pump(owner):
                        if out.finished:
                            pending.discard(out.request_id)
                            outputs[ids[out.request_id]] = out
                            bar.update(1)
        finally:
            self.release(owner)  # interrupted: frees what is left
        return [outputs[i] for i in range(len(items))]

    # -- introspection ------------------------------------------------------------------------
    def _weights_huge_page_share(self) -> float:
        """The share of the weights' resident memory on huge pages (models/huge_pages.py); 0.0
        when they stay on torch's allocator. Read from /proc once: it is settled when the
        weights are loaded, and the read costs milliseconds, too much for every metrics scrape."""
        if self._huge_share is None:
            placed = getattr(self.model, "huge_page_bytes", 0)
            self._huge_share = round(huge_page_share(next(self.model.parameters())), 3) if placed else 0.0
        return self._huge_share

    @_locked
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
            # the native CPU kernel paths (instruction set, native-or-torch per linear shape class,
            # whether decode steps run as one native call)
            "cpu_kernels": ({**cpu_kernel_stats(), "decode_stack": native_decode.status(),
                             "weights_on_huge_pages": self._weights_huge_page_share()}
                            if self.device.type == "cpu" else None),
        }
