"""Generic safetensors loading: one loop over the checkpoint's tensors, driven by the model's
declarative name mapping (prefix_map, packed_modules, shard_layout, reshaped_params)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from baton.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def checkpoint_files(checkpoint_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: the index's shards, or the single file."""
    root = Path(checkpoint_dir)
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is corrupt: {e}") from None
        files = [root / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) missing from {root}: {', '.join(missing)}")
        return files
    if (root / SINGLE_FILE).is_file():
        return [root / SINGLE_FILE]
    shards = sorted(root.glob("*.safetensors"))
    if shards:
        return shards
    raise CheckpointError(f"checkpoint dir {root} has no {SINGLE_FILE} and no {INDEX_FILE}")


def iterate_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor, Path]]:
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name), path
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises several types for truncated/corrupt files
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def _all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """isfinite().all() in slices, so a vocabulary-sized tensor needs no full-size bool copy."""
    if not t.is_floating_point():
        return True
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def _our_name(model, name: str) -> str | None:
    for theirs, ours in model.prefix_map:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


@torch.no_grad()
def load_weights(model: torch.nn.Module, checkpoint_dir: str | Path, check_finite: bool = True) -> None:
    """Copies every checkpoint tensor into `model` (converting dtype); raises CheckpointError
    naming the file and tensor on a shape mismatch, and listing parameters left unfilled.
    check_finite: also on a NaN or inf in a loaded weight (one pass over each tensor, after
    the dtype conversion, so a value that overflows the target dtype is caught too)."""
    params = dict(model.named_parameters())
    layout = model.shard_layout()
    filled: set[str] = set()
    tied = getattr(model.cfg, "tie_word_embeddings", False)
    for name, tensor, path in iterate_tensors(checkpoint_files(checkpoint_dir)):
        ours = _our_name(model, name)
        if ours is None or (tied and ours == "lm_head.weight"):
            continue
        target, rows = ours, None
        for sub, (fused, shard) in model.packed_modules.items():
            if f".{sub}." in ours:
                target = ours.replace(f".{sub}.", f".{fused}.")
                rows = layout[fused][shard]
                break
        param = params.get(target)
        if param is None:
            continue  # e.g. a video-only or rotary-buffer tensor Baton does not use
        dest = param.data if rows is None else param.data.narrow(0, *rows)
        if target in model.reshaped_params and tensor.numel() == dest.numel():
            tensor = tensor.reshape(dest.shape)
        if tuple(tensor.shape) != tuple(dest.shape):
            raise CheckpointError(
                f"{path.name}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"model expects {tuple(dest.shape)} for {target}"
            )
        dest.copy_(tensor)
        if check_finite and not _all_finite(dest):
            why = "overflows " + str(dest.dtype).removeprefix("torch.") if _all_finite(tensor) else "holds NaN or inf"
            raise CheckpointError(f"{path.name}: tensor {name} {why}; pass check_weights=False to load it anyway")
        filled.add(target if rows is None else f"{target}#{rows[0]}")
    expected = set()
    for pname in params:
        fused = next((f for f in layout if f".{f}." in pname), None)
        if fused is None:
            expected.add(pname)
        else:
            expected.update(f"{pname}#{off}" for off, _ in layout[fused].values())
    missing = sorted(expected - filled)
    if missing:
        shown = ", ".join(m.split("#")[0] for m in missing[:5])
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} lacks {len(missing)} tensor(s) the model needs, e.g. {shown}"
        )
