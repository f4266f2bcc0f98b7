"""Native skinny GEMM or torch's GEMM for a CPU linear layer: chosen by measurement, cached.

Which one is faster depends on the CPU: on AVX2 machines torch's bfloat16 GEMM is emulated
and the native kernel wins at every row count, while oneDNN's bfloat16 GEMM on AVX512_BF16
or AMX parts prefills several times faster than the native one. So the first product of each
shape class (dtype, rows rounded up to a power of two, N, K, threads, native path) times
both on the layer's own weight for a few milliseconds (a few hundred at prefill sizes, once
per machine) and keeps the faster one. Each timed call starts with the weight out of the
caches, as in a forward pass, where the other layers' weights have evicted it: timed in cache,
a bfloat16 GEMV measured compute speed, not the DRAM-bound speed decode runs at. Decisions are cached on disk, in
`$BATON_CACHE_DIR/cpu_routing.json` (default ~/.cache/baton), keyed by the CPU model string
and the torch version; a file that is corrupt, of another schema, CPU or torch version is
ignored and rewritten. Writes go through a temp file and os.replace, so concurrent processes
leave a whole file (the last writer's).

BATON_CPU_KERNELS overrides the measurement: native (always the native kernel), torch
(always F.linear), static (the fixed rule measured on an AVX2 development machine: float32
up to STATIC_MAX_ROWS rows, bfloat16 always), auto (the default: measured).
"""
from __future__ import annotations

import contextlib
import json
import mmap
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from baton.kernels import cpu_isa

ENV_MODE = "BATON_CPU_KERNELS"
MODES = ("auto", "native", "torch", "static")
SCHEMA = 6  # 3: entries carry "reliable"; 4: timed with the weight evicted from the caches;
# 5: the native kernel gained the panel GEMM (many rows) and widens bf16 in registers up to 5
# column chunks, so older timings of it are stale; 6: below a panel of rows it reads each chunk of
# weight rows as 4 streams (1.0-1.3x faster), so older timings of it there undersell it
FILE_NAME = "cpu_routing.json"
# The static rule: up to this many float32 rows the native kernel beat the BLAS sgemm at
# Qwen3-VL-2B shapes on the AVX2 development CPU (1.07-2.0x at 64-128 rows, 0.86-1.18x at 256).
STATIC_MAX_ROWS = 192
# Row classes end here: larger products share the last class.
MAX_BUCKET = 1024
# Timed products have at most this many rows (bounds the one-off cost at prefill sizes).
MEASURE_MAX_ROWS = 512

# The measurement: a path this many times slower than the other is out; two best times within
# STABLE of each other end it; past MEASURE_BUDGET_S it stops after its second round.
DECISIVE = 3.0
STABLE = 0.1
MEASURE_MAX_ROUNDS = 30
MEASURE_BUDGET_S = 0.25
# Reading this many bytes (at least twice the last-level cache) evicts the weight before each call.
EVICT_MIN_BYTES = 64 << 20

_lock = threading.Lock()
_decisions: dict[tuple, bool] = {}
_first_uses = 0  # decisions made in this process: each timed its shape, or read the disk cache
_entries: dict[str, dict] | None = None  # the file's entries, loaded on first use
_mode: str | None = None


def mode() -> str:
    """BATON_CPU_KERNELS (read once; `reset` rereads it)."""
    global _mode
    if _mode is None:
        value = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
        if value not in MODES:
            from baton.errors import InvalidRequestError

            raise InvalidRequestError(f"{ENV_MODE}={value!r}; valid: {', '.join(MODES)}")
        _mode = value
    return _mode


def cache_path() -> Path:
    root = os.environ.get("BATON_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "baton") / FILE_NAME


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def header() -> dict:
    """What a cache file must match to be used."""
    return {"schema": SCHEMA, "cpu": cpu_model(), "torch": torch.__version__}


def bucket(rows: int) -> int:
    """Rows rounded up to a power of two, at most MAX_BUCKET."""
    return min(1 << (rows - 1).bit_length(), MAX_BUCKET)


def static_choice(dtype: torch.dtype, rows: int) -> bool:
    return dtype == torch.bfloat16 or rows <= STATIC_MAX_ROWS


def use_native(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether this CPU product (already checked to suit the native kernel) should run it.
    A dict lookup once its class is known."""
    key = (x.dtype, bucket(x.shape[0]), weight.shape[0], weight.shape[1],
           torch.get_num_threads(), cpu_isa.active() or "none")
    choice = _decisions.get(key)
    if choice is None:
        choice = _decide(key, x, weight, bias)
    return choice


def first_uses() -> int:
    """How many shape classes this process has routed so far. A forward pass that raised it
    spent part of its time choosing (up to a few hundred ms), so its timing is not the model's
    (engine/model_runner.py flags such steps for the latency router's calibration)."""
    return _first_uses


def _decide(key, x, weight, bias) -> bool:
    global _first_uses
    m = mode()
    if m == "static":  # by exact rows, so not cached per class
        return static_choice(x.dtype, x.shape[0])
    if m != "auto":
        _decisions[key] = m == "native"
        return _decisions[key]
    with _lock:
        if key in _decisions:
            return _decisions[key]
        _first_uses += 1
        entries = _load()
        name = entry_name(*key)
        entry = entries.get(name)
        if entry is None or entry.get("path") not in ("native", "torch"):
            try:
                entry = measure(x.dtype, key[1], weight, bias)
            except Exception as e:  # never fail a product over its routing
                warnings.warn(f"CPU routing measurement failed ({e}); using the static rule")
                entry = {"reliable": False}
            if entry.get("reliable"):
                entries[name] = entry
                _save(entries)
            else:  # too noisy to keep: the static rule, remeasured by the next process
                entry = {"path": "native" if static_choice(x.dtype, x.shape[0]) else "torch"}
        _decisions[key] = entry["path"] == "native"
        return _decisions[key]


def entry_name(dtype, rows, n, k, threads, isa) -> str:
    return f"{isa}|{str(dtype).removeprefix('torch.')}|t{threads}|m{rows}|{n}x{k}"


def measure(dtype: torch.dtype, rows: int, weight: torch.Tensor, bias: torch.Tensor | None) -> dict:
    """Times the native kernel and F.linear on `weight` for `rows` input rows (at most
    MEASURE_MAX_ROWS), alternating, and returns the cache entry: the faster path ("native"
    or "torch"), both best times, and whether the figures are trustworthy ("reliable").

    The best (minimum) time of each path is the estimate; a path more than DECISIVE times
    slower than the other stops being timed. The rounds stop once each path's two best times
    agree within STABLE, or after MEASURE_BUDGET_S (two rounds at least). On a busy machine
    (other processes preempting a thread mid-product) neither may happen: the entry is then
    marked unreliable, the static rule decides, and nothing is written to disk."""
    from baton.kernels import _native

    m = min(rows, MEASURE_MAX_ROWS)
    with torch.no_grad():
        x = torch.randn(m, weight.shape[1], dtype=dtype)
        b = None if bias is None else bias.detach()
        w = weight.detach()
        paths = {"native": lambda: _native.skinny_linear(x, w, b), "torch": lambda: F.linear(x, w, b)}
        samples: dict[str, list[float]] = {name: [] for name in paths}
        timing = set(paths)
        evict_map, evict = _eviction_buffer(max(EVICT_MIN_BYTES, 2 * last_level_cache_bytes()))
        try:
            t_start = time.perf_counter()
            for rnd in range(MEASURE_MAX_ROUNDS):
                for name in sorted(timing):  # the first round is the warm-up, but counts
                    evict.sum()
                    t0 = time.perf_counter()
                    paths[name]()
                    samples[name].append(time.perf_counter() - t0)
                best = {name: min(ts) for name, ts in samples.items()}
                spent = time.perf_counter() - t_start
                # three samples each (two for products slower than the budget) before a path is out:
                # one preempted call must not decide
                if rnd >= 2 or (rnd >= 1 and spent > MEASURE_BUDGET_S):
                    for name in list(timing):
                        if len(timing) > 1 and best[name] > DECISIVE * min(best.values()):
                            timing.discard(name)
                stable = all(_stable(samples[name]) for name in timing)
                if (rnd >= 4 and stable) or (rnd >= 1 and spent > MEASURE_BUDGET_S):
                    break
        finally:
            del evict
            evict_map.close()
    decisive = len(timing) == 1
    path = "native" if best["native"] <= best["torch"] else "torch"
    return {"path": path, "native_ms": round(best["native"] * 1e3, 4), "torch_ms": round(best["torch"] * 1e3, 4),
            "measured_rows": m, "reliable": bool(decisive or stable)}


def _eviction_buffer(nbytes: int) -> tuple[mmap.mmap, torch.Tensor]:
    """nbytes of float32 ones in an anonymous mapping of their own, outside malloc: the CPU
    engine tells glibc to keep freed memory (engine/host_allocator.py), so a buffer this size
    from the heap could stay resident after the measurement (up to +64 MB of RSS per measured
    shape class, seen by tests/engine/test_validation.py). Closing the map returns it."""
    buf = mmap.mmap(-1, nbytes)
    t = torch.frombuffer(buf, dtype=torch.float32)
    t.fill_(1.0)  # untouched pages would all read the one zero page, evicting nothing
    return buf, t


def last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports for cpu0, in bytes (0 if it reports none)."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        with contextlib.suppress(OSError, ValueError):
            text = entry.read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=0)


def _stable(ts: list[float]) -> bool:
    if len(ts) < 2:
        return False
    a, b = sorted(ts)[:2]
    return b <= a * (1 + STABLE)


def _load() -> dict:
    global _entries
    if _entries is None:
        _entries = read_entries(cache_path())
    return _entries


def read_entries(path: Path) -> dict:
    """The entries of a valid, current cache file; {} when it is missing, corrupt or stale."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("header") != header() or not isinstance(data.get("entries"), dict):
        return {}
    return {k: v for k, v in data["entries"].items() if isinstance(v, dict)}


def _save(entries: dict) -> None:
    """Merges `entries` into the file (other processes' new entries kept) and replaces it
    atomically. A read-only cache directory only costs the re-measurement next process."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**read_entries(path), **entries}
        fd, tmp = tempfile.mkstemp(prefix=FILE_NAME + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"header": header(), "entries": merged}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        entries.update(merged)
    except OSError as e:
        warnings.warn(f"could not write the CPU routing cache {path}: {e}")


def decisions() -> dict[str, str]:
    """This process's decisions so far, by entry name (for llm.stats and baton info)."""
    return {entry_name(*k): ("native" if v else "torch") for k, v in list(_decisions.items())}


def cpu_kernel_stats() -> dict:
    """The active instruction-set path, each native kernel's path and this process's linear
    routing decisions (llm.stats()["cpu_kernels"])."""
    return {"isa": cpu_isa.active(), "kernel_paths": cpu_isa.kernel_paths(), "routing_mode": mode(),
            "linear_routes": decisions()}


def reset() -> None:
    """Forgets the in-process decisions and rereads BATON_CPU_KERNELS and the file (tests)."""
    global _entries, _mode
    with _lock:
        _decisions.clear()
        _entries = None
        _mode = None
