"""Input processing for Qwen3-VL: chat template, image preprocessing, placeholder expansion,
multimodal rotary (M-RoPE) positions and image content hashes.

The tokenizer and the image processor are transformers' (loaded from the checkpoint dir;
the image processor is the PIL one, so torchvision is not needed). Placeholder expansion and
positions are ours and match `Qwen3VLProcessor` + `Qwen3VLModel.get_rope_index`:

- a prompt holds one `<|vision_start|><|image_pad|><|vision_end|>` per image; each
  `<|image_pad|>` becomes t*h*w / merge_size**2 pad tokens (one per merged 2x2 patch group);
- text tokens get the same position on all three axes (t, h, w), advancing by one;
- an image's tokens get (start + t, start + row, start + col) over its merged grid, where
  start is the next free position; text after the image continues at max position + 1.
- after the prompt, the token at sequence index i has position i + mrope_delta on every axis.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from baton.errors import CheckpointError, InvalidRequestError
from baton.models.config import VisionConfig, load_config
from baton.models.image_io import DEFAULT_MAX_IMAGE_PIXELS, content_hash, load_image

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END

_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ImageInput:
    """One preprocessed image, placed in a prompt.

    pixel_values: float32 [num_patches, C * temporal_patch * patch * patch], as the HF image
        processor returns it (read-only: it may be shared between prompts).
    grid_thw: patch grid (t, h, w) before merging; num_tokens = t*h*w // merge_size**2.
    offset: index in the prompt's token_ids of the image's first pad token (-1: not placed).
    content_hash: sha256 hex of the decoded RGB pixels (+ size, mode).
    """

    pixel_values: torch.Tensor
    grid_thw: tuple[int, int, int]
    num_tokens: int
    offset: int
    content_hash: str


@dataclass(frozen=True)
class MRopePositions:
    """M-RoPE positions of a sequence (models.interface.TokenPositions).

    prompt: int64 [3, L] (t, h, w rows) of the L prompt tokens; the token at sequence index
    i >= L has position i + delta on all three rows.
    """

    prompt: torch.Tensor
    delta: int

    def positions(self, start: int, end: int) -> torch.Tensor:
        """int64 [3, end - start] of tokens [start, end)."""
        p = self.prompt.shape[1]
        parts = []
        if start < p:
            parts.append(self.prompt[:, start:min(end, p)])
        if end > p:
            gen = torch.arange(max(start, p), end, dtype=torch.long) + self.delta
            parts.append(gen.expand(3, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@dataclass
class ProcessedPrompt:
    """A prompt ready for the engine.

    token_ids: with every image placeholder expanded to its image's pad tokens.
    positions: the positions of its tokens and of those generated after it.
    """

    token_ids: list[int]
    images: list[ImageInput]
    positions: MRopePositions

    @property
    def mrope_positions(self) -> torch.Tensor:
        """int64 [3, len(token_ids)] (t, h, w rows)."""
        return self.positions.prompt

    @property
    def mrope_delta(self) -> int:
        """The token at sequence index i >= len(token_ids) has position i + mrope_delta."""
        return self.positions.delta


def mrope_positions(token_ids: Sequence[int], image_token_id: int,
                    grids: Sequence[tuple[int, int, int]], merge_size: int) -> tuple[torch.Tensor, int]:
    """M-RoPE positions [3, L] and delta for an expanded prompt (Qwen3-VL's get_rope_index).

    Image pad tokens are consumed image by image in order (grid t*h*w // merge**2 each), so two
    images with nothing between them are still told apart.
    """
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    length = ids.numel()
    is_pad = ids == image_token_id
    expected = sum(t * h * w // merge_size**2 for t, h, w in grids)
    found = int(is_pad.sum())
    if found != expected:
        raise InvalidRequestError(
            f"prompt has {found} image pad tokens but its {len(grids)} image(s) need {expected}")
    pad_idx = torch.nonzero(is_pad).flatten().tolist()

    pieces: list[torch.Tensor] = []
    pos = 0  # next free position
    cursor = 0  # next token index
    k = 0  # index into pad_idx
    for t, h, w in grids:
        n = t * h * w // merge_size**2
        start = pad_idx[k]
        if pad_idx[k + n - 1] != start + n - 1:
            raise InvalidRequestError(
                f"image at token {start} needs {n} consecutive image pad tokens")
        if start > cursor:  # text before the image
            pieces.append(torch.arange(pos, pos + start - cursor).expand(3, -1))
            pos += start - cursor
        gh, gw = h // merge_size, w // merge_size
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
        pieces.append(torch.stack([tt, hh, ww]).reshape(3, -1) + pos)
        pos += max(gh, gw)
        cursor = start + n
        k += n
    if cursor < length:
        pieces.append(torch.arange(pos, pos + length - cursor).expand(3, -1))
    if not pieces:
        return torch.zeros(3, 0, dtype=torch.long), 0
    positions = torch.cat(pieces, dim=1).contiguous()
    delta = int(positions.max()) + 1 - length
    return positions, delta


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: the tokenizer would raise TypeError
        raise InvalidRequestError(f"{where} is not valid Unicode: {e.reason} at index {e.start}") from None


class Processor:
    """Tokenizer + image processor of a Qwen3-VL checkpoint dir, and the glue between them.

    Raises CheckpointError (naming the file) when the tokenizer or preprocessor files are
    missing or corrupt, or disagree with config.json; request problems raise
    InvalidRequestError. Images above `max_image_pixels` (width * height; None: no cap) are
    refused before they are decoded. Preprocessed images are cached (LRU, at most
    image_cache_size entries and image_cache_bytes). `release_memory`, when set, is called
    after an image of LARGE_IMAGE_PIXELS or more, once its decode buffers are freed.
    """

    LARGE_IMAGE_PIXELS = 1 << 21

    def __init__(self, checkpoint_dir: str | Path, *, image_cache_size: int = 16,
                 image_cache_bytes: int = 256 << 20, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        root = Path(checkpoint_dir)
        if not root.is_dir():
            raise CheckpointError(f"checkpoint dir {root} does not exist")
        self.checkpoint_dir = root
        self.max_image_pixels = max_image_pixels
        # parsed first: transformers reads config.json too, and its errors would name tokenizer.json
        self._config = load_config(root) if (root / "config.json").is_file() else None
        self.tokenizer = self._load_tokenizer(root)
        self.image_processor = self._load_image_processor(root)
        self.merge_size = int(self.image_processor.merge_size)
        self.patch_size = int(self.image_processor.patch_size)
        self.temporal_patch_size = int(self.image_processor.temporal_patch_size)

        ids = {}
        for token in (IMAGE_PAD, VISION_START, VISION_END, VIDEO_PAD):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if tid is None or tid == self.tokenizer.unk_token_id:
                raise CheckpointError(f"{root / 'tokenizer.json'}: tokenizer has no {token} token")
            ids[token] = tid
        self.image_token_id = ids[IMAGE_PAD]
        self.vision_start_token_id = ids[VISION_START]
        self.vision_end_token_id = ids[VISION_END]
        self.video_token_id = ids[VIDEO_PAD]
        self._check_config_ids(root)

        self.chat_template = self.tokenizer.chat_template or self._load_chat_template(root)
        self.eos_token_ids = self._load_eos_ids(root)
        self.pad_token_id = self.tokenizer.pad_token_id
        # the model's vocabulary may be padded past the tokenizer's
        self.vocab_size = max(len(self.tokenizer), self._config.text.vocab_size if self._config else 0)
        self._image_cache: OrderedDict[str, tuple[torch.Tensor, tuple[int, int, int]]] = OrderedDict()
        self._image_cache_size = image_cache_size
        self._image_cache_bytes = image_cache_bytes
        self._image_cache_lock = threading.Lock()
        self.release_memory = None

    # ---- loading ----

    @staticmethod
    def _load_tokenizer(root: Path):
        from transformers import AutoTokenizer

        tok_json = root / "tokenizer.json"
        if not tok_json.is_file() and not ((root / "vocab.json").is_file() and (root / "merges.txt").is_file()):
            raise CheckpointError(f"checkpoint dir {root} has no tokenizer.json")
        if tok_json.is_file():
            _read_json(tok_json)
        cfg_path = root / "tokenizer_config.json"
        if cfg_path.is_file():
            _read_json(cfg_path)
        try:
            return AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        except Exception as e:  # transformers raises many types for a bad tokenizer
            raise CheckpointError(f"{tok_json}: cannot load the tokenizer ({type(e).__name__}: {e})") from None

    @staticmethod
    def _load_image_processor(root: Path):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        path = root / "preprocessor_config.json"
        if not path.is_file():
            raise CheckpointError(f"checkpoint dir {root} has no preprocessor_config.json")
        cfg = _read_json(path)
        kind = cfg.get("image_processor_type", "Qwen2VLImageProcessor")
        if not str(kind).startswith("Qwen2VLImageProcessor"):
            raise CheckpointError(f"{path}: unsupported image_processor_type {kind!r} (expected Qwen2VLImageProcessor)")
        try:
            proc = Qwen2VLImageProcessorPil.from_pretrained(str(root), local_files_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot load the image processor ({type(e).__name__}: {e})") from None
        for field in ("patch_size", "merge_size", "temporal_patch_size"):
            value = getattr(proc, field, None)
            if not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{path}: {field} must be a positive integer, got {value!r}")
        return proc

    def _check_config_ids(self, root: Path) -> None:
        if self._config is None:
            return
        path = root / "config.json"
        raw = _read_json(path)  # only ids config.json sets: the parsed config fills defaults
        for key in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
            tid = getattr(self, key)
            if key in raw and getattr(self._config, key) != tid:
                raise CheckpointError(f"{path}: {key} is {raw[key]} but the tokenizer's token has id {tid}")
        self.check_vision_config(self._config.vision, str(path))

    def check_vision_config(self, vision: VisionConfig, where: str = "config.json") -> None:
        """CheckpointError naming both files unless the image processor cuts patches the way
        the vision tower of `vision` expects (otherwise the first image fails in a matmul)."""
        pre = self.checkpoint_dir / "preprocessor_config.json"
        pairs = (("patch_size", self.patch_size, "patch_size", vision.patch_size),
                 ("merge_size", self.merge_size, "spatial_merge_size", vision.spatial_merge_size),
                 ("temporal_patch_size", self.temporal_patch_size, "temporal_patch_size",
                  vision.temporal_patch_size))
        for ours, value, theirs, expected in pairs:
            if value != expected:
                raise CheckpointError(
                    f"{pre}: {ours} {value} differs from {where} vision_config.{theirs} {expected}")
        if vision.in_channels != 3:
            raise CheckpointError(f"{where}: vision_config.in_channels is {vision.in_channels}, but "
                                  f"{pre.name} makes RGB patches (3 channels)")

    @staticmethod
    def _load_chat_template(root: Path) -> str | None:
        if (root / "chat_template.jinja").is_file():
            return (root / "chat_template.jinja").read_text(encoding="utf-8")
        if (root / "chat_template.json").is_file():
            return _read_json(root / "chat_template.json").get("chat_template")
        return None

    def _load_eos_ids(self, root: Path) -> list[int]:
        ids = []
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        path = root / "generation_config.json"
        if path.is_file():
            eos = _read_json(path).get("eos_token_id")
            for tid in eos if isinstance(eos, list) else [eos]:
                if isinstance(tid, int) and tid not in ids:
                    ids.append(tid)
        return ids

    # ---- images ----

    def load_image(self, obj):
        """Any accepted image source -> RGB PIL image (InvalidRequestError if unreadable or
        above max_image_pixels)."""
        return load_image(obj, self.max_image_pixels)

    def num_image_tokens(self, grid_thw: Sequence[int]) -> int:
        t, h, w = grid_thw
        return t * h * w // self.merge_size**2

    def preprocess_image(self, obj) -> ImageInput:
        """Decode, hash and preprocess one image (offset -1: not yet placed in a prompt)."""
        if isinstance(obj, ImageInput):
            return obj
        img = load_image(obj, self.max_image_pixels)
        large = img.width * img.height >= self.LARGE_IMAGE_PIXELS
        digest = content_hash(img)
        with self._image_cache_lock:  # prompts are built on several threads (server, multi-agent)
            cached = self._image_cache.get(digest)
            if cached is not None:
                self._image_cache.move_to_end(digest)
        if cached is not None:
            pixel_values, grid = cached
        else:
            try:
                out = self.image_processor(images=[img], return_tensors="pt")
            except ValueError as e:  # e.g. an aspect ratio the resize rule refuses
                raise InvalidRequestError(f"image {img.width}x{img.height} cannot be preprocessed: {e}") from None
            pixel_values = out["pixel_values"]
            grid = tuple(int(x) for x in out["image_grid_thw"][0].tolist())
            self._cache_image(digest, pixel_values, grid)
        del img
        if large and self.release_memory is not None:
            self.release_memory()
        return ImageInput(pixel_values=pixel_values, grid_thw=grid, num_tokens=self.num_image_tokens(grid),
                          offset=-1, content_hash=digest)

    def _cache_image(self, digest: str, pixel_values: torch.Tensor, grid: tuple[int, int, int]) -> None:
        if self._image_cache_size <= 0 or pixel_values.nbytes > self._image_cache_bytes:
            return
        with self._image_cache_lock:
            self._image_cache[digest] = (pixel_values, grid)
            while (len(self._image_cache) > self._image_cache_size
                   or sum(p.nbytes for p, _ in self._image_cache.values()) > self._image_cache_bytes):
                self._image_cache.popitem(last=False)

    # ---- chat ----

    def render_chat(self, messages) -> tuple[str, list]:
        """Validate OpenAI-style messages and apply the chat template (add_generation_prompt).

        Returns the prompt text (one placeholder per image) and the images' sources in order.
        """
        if self.chat_template is None:
            raise CheckpointError(f"checkpoint dir {self.checkpoint_dir} has no chat template")
        if isinstance(messages, dict) or not isinstance(messages, (list, tuple)) or not messages:
            raise InvalidRequestError("messages must be a non-empty list of {'role', 'content'} dicts")
        clean: list[dict] = []
        images: list = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise InvalidRequestError(f"messages[{i}] must be a dict, got {type(msg).__name__}")
            role = msg.get("role")
            if role not in _ROLES:
                raise InvalidRequestError(f"messages[{i}].role must be one of {', '.join(_ROLES)}, got {role!r}")
            if "content" not in msg:
                raise InvalidRequestError(f"messages[{i}] has no content")
            content = msg["content"]
            if isinstance(content, str):
                _check_text(content, f"messages[{i}].content")
                clean.append({"role": role, "content": content})
                continue
            if not isinstance(content, (list, tuple)):
                raise InvalidRequestError(
                    f"messages[{i}].content must be a string or a list of parts, got {type(content).__name__}")
            parts = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                parts.append(self._clean_part(part, where, images))
            clean.append({"role": role, "content": parts})
        try:
            text = self.tokenizer.apply_chat_template(
                clean, tokenize=False, add_generation_prompt=True, chat_template=self.chat_template)
        except Exception as e:  # a template may raise on messages it does not accept
            raise InvalidRequestError(f"chat template rejected the messages: {e}") from None
        return text, images

    @staticmethod
    def _clean_part(part, where: str, images: list) -> dict:
        if isinstance(part, str):
            _check_text(part, where)
            return {"type": "text", "text": part}
        if not isinstance(part, dict):
            raise InvalidRequestError(f"{where} must be a dict, got {type(part).__name__}")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError(f"{where}: a text part needs a string 'text'")
            _check_text(text, f"{where}.text")
            return {"type": "text", "text": text}
        if kind == "image":
            if part.get("image") is None:
                raise InvalidRequestError(f"{where}: an image part needs 'image' (PIL image, path or bytes)")
            images.append(part["image"])
            return {"type": "image"}
        if kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise InvalidRequestError(f"{where}: an image_url part needs image_url.url (a string)")
            images.append(url)
            return {"type": "image"}
        raise InvalidRequestError(f"{where}: unsupported part type {kind!r} (expected text, image or image_url)")

    # ---- prompts ----

    def process(self, prompt_text: str, images: Sequence | None = None) -> ProcessedPrompt:
        """Tokenize a formatted prompt, expand image placeholders and compute positions."""
        if not isinstance(prompt_text, str):
            raise InvalidRequestError(f"prompt must be a string, got {type(prompt_text).__name__}")
        _check_text(prompt_text, "prompt")
        images = self._image_list(images)
        if VIDEO_PAD in prompt_text:
            raise InvalidRequestError("prompt contains <|video_pad|>: videos are not supported")
        n_placeholders = prompt_text.count(IMAGE_PLACEHOLDER)
        n_pads = prompt_text.count(IMAGE_PAD)
        if n_pads != n_placeholders:
            raise InvalidRequestError(
                f"prompt has {n_pads - n_placeholders} <|image_pad|> outside "
                f"{IMAGE_PLACEHOLDER}; each image must use exactly that placeholder")
        if n_placeholders != len(images):
            raise InvalidRequestError(
                f"prompt has {n_placeholders} image placeholder(s) ({IMAGE_PLACEHOLDER}) "
                f"but {len(images)} image(s) were given")
        ids = self.tokenizer.encode(prompt_text, add_special_tokens=False)
        return self._expand(ids, [self.preprocess_image(img) for img in images], expanded=False)

    def process_ids(self, token_ids: Sequence[int], images: Sequence | None = None) -> ProcessedPrompt:
        """Like process() for a prompt given as token ids: one <|image_pad|> id per image, or
        already expanded (each image's full run of pad ids).

        Other ids, <|video_pad|> included, are taken as text: id prompts often carry generated
        tokens, and a model can generate any id below its vocab_size.
        """
        images = [self.preprocess_image(img) for img in self._image_list(images)]
        try:
            ids = [int(t) for t in token_ids]
        except (TypeError, ValueError):
            raise InvalidRequestError("prompt token ids must be integers") from None
        if any(t < 0 or t >= self.vocab_size for t in ids):
            raise InvalidRequestError(f"prompt token ids must lie in [0, {self.vocab_size})")
        n_pads = ids.count(self.image_token_id)
        total = sum(img.num_tokens for img in images)
        if n_pads == len(images):
            return self._expand(ids, images, expanded=False)
        if n_pads == total:
            return self._expand(ids, images, expanded=True)
        raise InvalidRequestError(
            f"prompt has {n_pads} <|image_pad|> token(s) but {len(images)} image(s) were given "
            f"(expected {len(images)}, or {total} when already expanded)")

    def process_chat(self, messages) -> ProcessedPrompt:
        """render_chat + process."""
        text, images = self.render_chat(messages)
        return self.process(text, images)

    def positions_for(self, token_ids: Sequence[int], images: Sequence) -> tuple[torch.Tensor, int]:
        """M-RoPE positions [3, L] and delta for expanded token ids; images are ImageInputs
        or (t, h, w) grids, in prompt order."""
        grids = [img.grid_thw if isinstance(img, ImageInput) else tuple(img) for img in images]
        return mrope_positions(token_ids, self.image_token_id, grids, self.merge_size)

    def _expand(self, ids: list[int], images: list[ImageInput], expanded: bool) -> ProcessedPrompt:
        if not ids:
            raise InvalidRequestError("prompt is empty")
        out: list[int] = []
        placed: list[ImageInput] = []
        it = iter(images)
        i = 0
        while i < len(ids):
            tid = ids[i]
            if tid != self.image_token_id:
                out.append(tid)
                i += 1
                continue
            img = next(it)
            if expanded and ids[i:i + img.num_tokens] != [self.image_token_id] * img.num_tokens:
                raise InvalidRequestError(
                    f"image at token {i} needs {img.num_tokens} consecutive <|image_pad|> tokens")
            placed.append(replace(img, offset=len(out)))
            out.extend([self.image_token_id] * img.num_tokens)
            i += img.num_tokens if expanded else 1
        positions, delta = self.positions_for(out, placed)
        return ProcessedPrompt(token_ids=out, images=placed, positions=MRopePositions(positions, delta))

    @staticmethod
    def _image_list(images) -> list:
        if images is None:
            return []
        if not isinstance(images, (list, tuple)):
            return [images]  # a single image
        return list(images)

    # ---- output ----

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False)
