"""Which image URLs an HTTP client may send `baton serve`, and how they are read.

- `data:image/...;base64,...` URLs always (decoded by the processor, which refuses bad base64,
  undecodable images and images above the pixel cap before decoding their pixels);
- `file://` URLs only under `allowed_local_media_path` (symlinks resolved first);
- `http(s)://` URLs only when `allow_remote` is set: fetched with a timeout and a byte cap,
  redirects only to http(s).
Anything else is refused: a client never names a local path the server would open. Chat
messages are rewritten so that the processor only ever sees data URLs, vetted paths or bytes.
"""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from baton.engine.openai_protocol import bad
from baton.errors import InvalidRequestError


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(("http://", "https://")):
            raise bad(f"image URL redirected to a non-http(s) URL: {newurl[:80]!r}", code="invalid_image_url")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class MediaPolicy:
    allowed_local_media_path: str | None = None
    allow_remote: bool = False
    fetch_timeout: float = 5.0
    max_fetch_bytes: int = 20 << 20
    max_images: int = 16

    def __post_init__(self):
        root = self.allowed_local_media_path
        self._root = Path(root).resolve() if root else None
        if self._root is not None and not self._root.is_dir():
            raise InvalidRequestError(f"allowed_local_media_path {root} is not a directory")
        self._opener = urllib.request.build_opener(_HttpOnlyRedirects)

    def resolve_messages(self, messages: list) -> list:
        """A copy of chat messages whose image_url parts hold what the processor may open.
        Raises ApiError (400) for a refused URL, a failed fetch or too many images."""
        out, images = [], 0
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("content"), list):
                out.append(msg)  # plain text content; the processor checks the rest
                continue
            parts = []
            for j, part in enumerate(msg["content"]):
                where = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append(part)
                elif kind == "image_url":
                    images += 1
                    if images > self.max_images:
                        raise bad(f"too many images: at most {self.max_images} per request", "messages",
                                  "too_many_images")
                    parts.append(self._image_part(part, where))
                else:
                    raise bad(f"{where}: unsupported content part type {kind!r} (expected 'text' or 'image_url')",
                              "messages")
            out.append({**msg, "content": parts})
        return out

    def _image_part(self, part: dict, where: str) -> dict:
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url:
            raise bad(f"{where}: an image_url part needs image_url.url (a string)", "messages")
        lower = url.strip().lower()
        if lower.startswith("data:"):
            return {"type": "image_url", "image_url": {"url": url}}
        if lower.startswith("file://"):
            return {"type": "image_url", "image_url": {"url": self._local_path(url[len("file://"):], where)}}
        if lower.startswith(("http://", "https://")):
            return {"type": "image", "image": self._fetch(url.strip(), where)}
        raise bad(f"{where}: image_url.url must be a data:image/...;base64 URL, a file:// URL (under "
                  "--allowed-local-media-path) or an http(s) URL (with --allow-remote-media)", "messages",
                  "invalid_image_url")

    def _local_path(self, path: str, where: str) -> str:
        if self._root is None:
            raise bad(f"{where}: file:// image URLs are disabled (start the server with --allowed-local-media-path)",
                      "messages", "invalid_image_url")
        resolved = Path(os.path.expanduser(path)).resolve()
        if not resolved.is_relative_to(self._root):
            raise bad(f"{where}: {path!r} is outside the allowed local media path", "messages", "invalid_image_url")
        return str(resolved)

    def _fetch(self, url: str, where: str) -> bytes:
        if not self.allow_remote:
            raise bad(f"{where}: http(s) image URLs are disabled (start the server with --allow-remote-media)",
                      "messages", "invalid_image_url")
        try:
            with self._opener.open(urllib.request.Request(url, headers={"User-Agent": "baton"}),
                                   timeout=self.fetch_timeout) as resp:
                size = resp.headers.get("Content-Length")
                if size is not None and size.isdigit() and int(size) > self.max_fetch_bytes:
                    raise bad(f"{where}: image at {url[:80]!r} is {size} bytes, above the cap of "
                              f"{self.max_fetch_bytes}", "messages", "image_too_large")
                data = self._read(resp, url, where)
        except (urllib.error.URLError, OSError, ValueError) as e:  # includes timeouts and HTTP errors
            raise bad(f"{where}: cannot fetch image {url[:80]!r}: {e}", "messages", "image_fetch_failed") from None
        return data

    def _read(self, resp, url: str, where: str) -> bytes:
        """The body, within the byte cap and the timeout as a total deadline (a server that
        drips bytes cannot hold a request longer than fetch_timeout)."""
        deadline = time.monotonic() + self.fetch_timeout
        chunks, size = [], 0
        while chunk := resp.read1(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_fetch_bytes:
                raise bad(f"{where}: image at {url[:80]!r} is larger than the cap of {self.max_fetch_bytes} bytes",
                          "messages", "image_too_large")
            if time.monotonic() > deadline:
                raise bad(f"{where}: fetching {url[:80]!r} took longer than {self.fetch_timeout} s", "messages",
                          "image_fetch_failed")
        return b"".join(chunks)
