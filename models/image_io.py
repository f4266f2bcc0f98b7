"""Image sources -> RGB pixels, and content hashes of those pixels.

Accepted sources: a PIL image, a local path (str / Path / "file://..."), raw encoded bytes, a
"data:image/...;base64,..." URL, or an HxWx3 / HxW uint8 numpy array. Nothing is fetched
over the network. Images above `max_pixels` (width * height) are refused from the header,
before their pixels are decoded. Decoding follows transformers' `load_image` + the image processor's RGB
conversion (EXIF orientation applied, transparency composited onto white), so our pixels
are exactly what the Hugging Face processor would see.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from baton.errors import InvalidRequestError

# 32 Mpx, about 100 MB as RGB. Qwen3-VL's processor shrinks images to at most 16 Mpx anyway,
# so a larger cap only buys decoding memory.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 4096


def _describe(obj) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def check_pixels(width: int, height: int, max_pixels: int | None, what: str = "image") -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise InvalidRequestError(
            f"{what} is {width}x{height} = {width * height} pixels, above max_image_pixels={max_pixels}; "
            "send a smaller image or raise LLM(max_image_pixels=...)")


_DECODE_ERRORS = (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError)


def _unreadable(e: Exception, what: str) -> InvalidRequestError:
    if isinstance(e, Image.DecompressionBombError):
        return InvalidRequestError(f"{what}: image is too large to decode safely ({e})")
    return InvalidRequestError(f"{what}: not a readable image ({type(e).__name__}: {e})")


def _decode(data: bytes, what: str, max_pixels: int | None) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except _DECODE_ERRORS as e:
        raise _unreadable(e, what) from None
    check_pixels(img.width, img.height, max_pixels, what)
    try:
        img.load()  # Image.open is lazy; truncated files fail here
    except _DECODE_ERRORS as e:
        raise _unreadable(e, what) from None
    return img


def _from_data_url(url: str, max_pixels: int | None) -> Image.Image:
    header, sep, payload = url.partition(",")
    if not sep:
        raise InvalidRequestError("image data URL has no ',' separating the header from the data")
    if not header.lower().startswith("data:image/"):
        raise InvalidRequestError(f"data URL of type {header[5:] or '?'!r} is not an image (expected data:image/...)")
    if not header.lower().endswith(";base64"):
        raise InvalidRequestError("image data URL must be base64-encoded (data:image/...;base64,...)")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidRequestError(f"image data URL: invalid base64 ({e})") from None
    return _decode(data, "image data URL", max_pixels)


def _from_path(path: Path, max_pixels: int | None) -> Image.Image:
    if not path.exists():
        raise InvalidRequestError(f"image file {path} does not exist")
    if not path.is_file():
        raise InvalidRequestError(f"image path {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidRequestError(f"image file {path}: cannot read ({e})") from None
    return _decode(data, f"image file {path}", max_pixels)


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InvalidRequestError(
            f"image array must be uint8 HxW, HxWx3 or HxWx4, got {arr.dtype} {tuple(arr.shape)}")
    return Image.fromarray(arr)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy with transparency composited onto white (what the HF processor does)."""
    has_alpha = "A" in img.getbands() or img.info.get("transparency") is not None
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(obj, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode any accepted image source into an RGB PIL image (EXIF orientation applied).

    Raises InvalidRequestError naming the problem for anything unreadable or unsupported, or
    larger than `max_pixels` (None: no cap).
    """
    if isinstance(obj, Image.Image):
        img = obj
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        if len(obj) == 0:
            raise InvalidRequestError("image bytes are empty")
        img = _decode(bytes(obj), "image bytes", max_pixels)
    elif isinstance(obj, np.ndarray):
        img = _from_array(obj)
    elif isinstance(obj, (str, os.PathLike)):
        text = os.fspath(obj)
        if isinstance(obj, str) and text.strip().lower().startswith("data:"):
            img = _from_data_url(text.strip(), max_pixels)
        elif isinstance(obj, str) and text.lower().startswith(("http://", "https://")):
            raise InvalidRequestError(
                f"image URL {_describe(text)}: remote images are not fetched; "
                "pass a local path, bytes, a PIL image or a data:image/...;base64 URL")
        else:
            if text.startswith("file://"):
                text = text[len("file://"):]
            if not text:
                raise InvalidRequestError("image path is empty")
            img = _from_path(Path(text), max_pixels)
    else:
        raise InvalidRequestError(
            f"unsupported image type {type(obj).__name__}: expected a PIL image, a local path, bytes "
            "or a data:image/...;base64 URL")
    check_pixels(img.width, img.height, max_pixels)  # a PIL image or array: before the RGB copy
    try:
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img)
    except (OSError, ValueError) as e:
        raise InvalidRequestError(f"image of mode {img.mode!r} cannot be converted to RGB ({e})") from None
    if rgb.width < 1 or rgb.height < 1:
        raise InvalidRequestError(f"image has no pixels ({rgb.width}x{rgb.height})")
    return rgb


def content_hash(img: Image.Image) -> str:
    """sha256 hex of the decoded pixels plus size and mode.

    Identical pixels give the same hash whatever container they came from (PNG, BMP, a
    re-encoded lossless copy); any pixel difference gives a different hash.
    """
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()
