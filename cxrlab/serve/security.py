"""Safety of the service: upload type and size checks before decoding, the bearer-token rule, log hygiene.

- The file type is decided from its first bytes (PNG / JPEG / DICOM signature), never from its name or the
  client's Content-Type; anything else is refused (415) before any decoder sees it.
- The pixel count is read from the header (Pillow opens lazily, pydicom stops before the pixel data), so a
  small file that would decompress to gigapixels is refused (413) without allocating it.
- A bearer token is mandatory whenever the service listens on anything but a loopback address.
- Log records never carry file names or DICOM attributes: requests are logged by result id only.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import logging
import socket

from cxrlab.errors import ConfigError, CxrlabError
from cxrlab.io import sniff



class UploadError(CxrlabError):
    """A refused upload; ``status`` is the HTTP status the service answers with."""

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason
        super().__init__(reason)


def probe_size(data: bytes, kind: str) -> tuple[int, int]:
    """(height, width) from the header only; UploadError(422) when the header cannot be read."""
    from PIL import Image

    try:
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            return rows * frames, cols
        with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header, not the pixels
            w, h = im.size
            return h, w
    except Image.DecompressionBombError:  # Pillow's own guard: the header claims > 2 x MAX_IMAGE_PIXELS
        raise UploadError(413, f"{kind.upper()} header claims more than {2 * Image.MAX_IMAGE_PIXELS} pixels: "
                               "refused as a decompression bomb") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure means an unreadable header
        raise UploadError(422, f"unreadable {kind.upper()} header ({type(exc).__name__})") from None


def check_upload(data: bytes, *, max_bytes: int, max_pixels: int, min_side: int) -> str:
    """Refuse what must not reach a decoder; return the detected kind."""
    if len(data) > max_bytes:
        raise UploadError(413, f"upload of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    if not data:
        raise UploadError(422, "empty upload")
    kind = sniff(data)
    if kind not in ("png", "jpeg", "dicom"):
        raise UploadError(415, "unsupported file type: expected PNG, JPEG or DICOM (decided by content)")
    h, w = probe_size(data, kind)
    if h * w > max_pixels:
        raise UploadError(413, f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
    if min(h, w) < min_side:
        raise UploadError(422, f"image of {w}x{h} pixels is smaller than {min_side} px: not a radiograph")
    return kind


def is_loopback(host: str) -> bool:
    """True only when every address ``host`` resolves to is a loopback address (``0.0.0.0`` is not)."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def require_token_rule(host: str, token: str | None, token_env: str) -> None:
    """The bind rule: a non-loopback bind without a token is a configuration error."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to listen on {host} without a bearer token: set ${token_env} (or bind to 127.0.0.1)"
        )
    if token is not None and len(token) < 16:
        raise ConfigError(f"${token_env} is too short: use at least 16 characters")


def token_matches(header: str | None, token: str) -> bool:
    """Constant-time comparison of an ``Authorization: Bearer ...`` header with the token."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())


class NoUploadDetailsFilter(logging.Filter):
    """Drops uvicorn access-log query strings (they could carry names) by logging the path only."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True
