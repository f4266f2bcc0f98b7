"""`baton info`: this machine's CPU, the native kernel path chosen on it, the native-vs-torch
routing cache, and the torch / oneDNN build (print beside any CPU figure)."""
from __future__ import annotations

import json
import os
import re

import torch

from baton.errors import InvalidRequestError


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _onednn_version() -> str | None:
    match = re.search(r"(?:oneDNN|MKL-DNN)\s+v?([0-9][0-9.]*)", torch.__config__.show())
    return match.group(1) if match else None


def _import_cpu_isa():
    """kernels.cpu_isa, and the refusal of a bad BATON_CPU_ISA (None if it is fine): the
    module is then imported without it, so the CPU's flags and paths still print."""
    try:
        from baton.kernels import cpu_isa

        return cpu_isa, None
    except InvalidRequestError as e:
        saved = os.environ.pop("BATON_CPU_ISA")
        try:
            from baton.kernels import cpu_isa
        finally:
            os.environ["BATON_CPU_ISA"] = saved
        return cpu_isa, str(e)


def _amx_path(cpu_isa) -> str:
    if not cpu_isa.available():
        return "not built"
    if "amx" in cpu_isa.levels():
        return "runnable here, opt-in (BATON_CPU_ISA=amx): not yet measured on an AMX CPU"
    return "built, not runnable here (no AMX); its kernel is tested on emulated tiles"


def collect() -> dict:
    """Everything `baton info` prints, as one dict."""
    cpu_isa, isa_error = _import_cpu_isa()
    from baton.kernels import cpu_routing

    info: dict = {"cpu": cpu_routing.cpu_model(), "logical_cpus": os.cpu_count(),
                  "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                  "onednn_available": bool(torch.backends.mkldnn.is_available()),
                  "onednn_version": _onednn_version(),
                  "native_built": cpu_isa.available(), "flags": cpu_isa.features(),
                  "isa_detected": cpu_isa.detected(), "isa_active": None if isa_error else cpu_isa.active(),
                  "isa_runnable": cpu_isa.levels(), "kernel_paths": {} if isa_error else cpu_isa.kernel_paths(),
                  "isa_default": cpu_isa.default(), "isa_error": isa_error, "amx_path": _amx_path(cpu_isa),
                  "isa_env": os.environ.get(cpu_isa.ENV)}
    from baton.models import huge_pages, native_decode

    info["decode_stack"] = native_decode.status()
    info["huge_pages"] = {"thp_mode": huge_pages.thp_mode(), "weights": huge_pages.huge_pages_enabled()}
    path = cpu_routing.cache_path()
    info["routing"] = {"mode": os.environ.get(cpu_routing.ENV_MODE, "auto"), "cache": str(path),
                       "cache_exists": path.exists(), "entries": cpu_routing.read_entries(path)}
    return info


def format_text(info: dict) -> str:
    flags = " ".join(f for f, present in info["flags"].items() if present) or "none detected"
    lines = [
        f"cpu            : {info['cpu']} ({info['logical_cpus']} logical CPUs)",
        f"flags          : {flags}",
        f"native kernels : {'built' if info['native_built'] else 'NOT built'}; detected path "
        f"{info['isa_detected']}, active {info['isa_active'] or 'none (refused, below)'}"
        + (f" (BATON_CPU_ISA={info['isa_env']})" if info["isa_env"] else "")
        + f"; runnable: {', '.join(info['isa_runnable'])}; AMX path: {info['amx_path']}",
    ]
    if info["isa_error"]:
        lines.append(f"  error        : {info['isa_error']}")
    for kernel, path in sorted(info["kernel_paths"].items()):
        lines.append(f"  {kernel:<24} {path}")
    lines.append(f"decode stack   : {info['decode_stack']} (every layer of a CPU decode step in one native call)")
    hp = info["huge_pages"]
    lines.append(f"huge pages     : weights {'advised' if hp['weights'] else 'off'}"
                 + ("" if hp["weights"] else " (BATON_HUGE_PAGES=0 or no MADV_HUGEPAGE)")
                 + f"; kernel THP mode {hp['thp_mode'] or 'unknown'}"
                 + (" (advice ignored)" if hp["thp_mode"] == "never" else ""))
    lines += [
        f"torch          : {info['torch']}, {info['torch_threads']} threads"
        + (f" (OMP_NUM_THREADS={info['omp_num_threads']})" if info["omp_num_threads"] else ""),
        f"oneDNN         : {'available' if info['onednn_available'] else 'unavailable'}, "
        f"version {info['onednn_version'] or 'unknown'}",
    ]
    routing = info["routing"]
    lines.append(f"routing        : BATON_CPU_KERNELS={routing['mode']}; cache {routing['cache']} "
                 f"({len(routing['entries'])} entries{'' if routing['cache_exists'] else ', no file yet'})")
    for name, entry in sorted(routing["entries"].items()):
        lines.append(f"  {name:<44} {entry.get('path')}  (native {entry.get('native_ms')} ms, "
                     f"torch {entry.get('torch_ms')} ms)")
    return "\n".join(lines)


def run_from_args(args) -> int:
    info = collect()
    print(json.dumps(info, indent=1) if args.json else format_text(info))
    return 0
