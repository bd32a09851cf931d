"""What authorizes the client's requests: the headers each one carries.

Three sources, combined by `headers_auth`:
- `SignatureAuth`: the reference server's secp256k1 signature scheme (docs/PROTOCOL.md);
- `FixedHeaders`: the same headers on every request (a static bearer token, a tenant);
- `HeaderFile`: headers read from a file that another process rewrites, e.g. a JWT
  that a sidecar renews before it expires.

Header values are credentials: none of these classes puts one in a repr, a log line or
an exception message; they name the header, the file and the line instead.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import coincurve

from vss.auth import sign_header

__all__ = [
    "SIGNATURE_REUSE_S",
    "AuthProvider",
    "CombinedAuth",
    "FixedHeaders",
    "HeaderFile",
    "RefreshableAuth",
    "SignatureAuth",
    "headers_auth",
]

logger = logging.getLogger(__name__)

SIGNATURE_REUSE_S = 10.0  # how long one Authorization signature is sent again

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers the client itself must control: they frame the request or name the call's body.
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "content-type"})


class AuthProvider(Protocol):
    """Supplies the headers that authorize one request.

    Called once per HTTP request, retries included, so a provider can sign with the
    current time (the server rejects signatures more than 24 h from its clock).
    """

    def headers(self) -> Mapping[str, str]: ...


@runtime_checkable
class RefreshableAuth(AuthProvider, Protocol):
    """A provider whose credentials can go stale, such as a token that expires.

    After an AUTH error the client calls `refresh()`; when it returns True (the headers
    changed) the call is tried once more with the new headers.
    """

    def refresh(self) -> bool: ...


def check_header(name: str, value: str) -> str | None:
    """Why `name: value` cannot be sent as given, or None when it can.

    The reason names the header at most, never its value.
    """
    if not _HEADER_NAME.fullmatch(name):
        return "the header name is not an HTTP token"
    if name.lower() in _RESERVED:
        return f"{name} is set by the client itself"
    if not value:
        return f"{name} has an empty value"
    if not (value.isascii() and value.isprintable()):
        return f"the value of {name} is not printable ASCII"
    if value != value.strip():
        return f"the value of {name} has leading or trailing spaces"
    return None


class SignatureAuth:
    """The reference server's default authorizer: a secp256k1 signature over the time.

    `user_id` is the lower-case compressed-pubkey hex, the name the server gives this
    user's data; the reference server keys users by the hex exactly as sent, which is
    why `sign_header` always sends lower case.
    """

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise ValueError("VSS signing key must be 32 bytes")
        try:
            public_key = coincurve.PrivateKey(bytes(private_key)).public_key
        except ValueError as exc:
            raise ValueError("VSS signing key is not a valid secp256k1 private key") from exc
        self._private_key = bytes(private_key)
        self.user_id: str = public_key.format(compressed=True).hex()
        self._signed_at = -SIGNATURE_REUSE_S
        self._header = ""

    def headers(self) -> Mapping[str, str]:
        # A signature proves the key for a time the server accepts within 24 hours, so
        # reusing one for a few seconds gives nothing away and saves an ECDSA signing
        # per request on the restore's hot path.
        now = time.monotonic()
        if now - self._signed_at >= SIGNATURE_REUSE_S:
            self._header = sign_header(self._private_key)
            self._signed_at = now
        return {"Authorization": self._header}

    def __repr__(self) -> str:
        # Never show the key: reprs end up in logs and tracebacks.
        return f"SignatureAuth(user_id={self.user_id!r})"


class FixedHeaders:
    """Sends the same headers on every request (e.g. a bearer token from a JWT proxy).

    Raises ValueError for a header that cannot be sent (see `check_header`).
    """

    def __init__(self, headers: Mapping[str, str]) -> None:
        for name, value in headers.items():
            problem = check_header(name, value)
            if problem is not None:
                raise ValueError(f"VSS header {problem}")
        self._headers = dict(headers)

    def headers(self) -> Mapping[str, str]:
        return dict(self._headers)

    def __repr__(self) -> str:
        # Header values are usually credentials; show only the names.
        return f"FixedHeaders(names={sorted(self._headers)!r})"


def parse_header_lines(text: str, source: str) -> dict[str, str]:
    """The headers of a header file's text: one `NAME: VALUE` a line.

    Blank lines and lines starting with `#` are skipped. A malformed line is a
    ValueError naming `source` and the line number, never the line's text: a line with
    its colon missing may be a bare token.
    """
    found: dict[str, str] = {}
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, colon, value = stripped.partition(":")
        name, value = name.strip(), value.strip()
        problem = "no ':' between name and value" if not colon else check_header(name, value)
        if problem is None and name.lower() in seen:
            problem = f"{name} is given twice"
        if problem is not None:
            raise ValueError(f"{source}, line {number}: {problem}")
        seen.add(name.lower())
        found[name] = value
    return found


class HeaderFile:
    """Headers read from a file of `NAME: VALUE` lines, kept fresh as the file changes.

    The file is read at construction (a missing, unreadable or malformed file is a
    ValueError then), and again whenever its size, mtime or inode changes, which is
    checked with one stat() per request. A later read that fails (the file is gone or
    half-written) keeps the headers read before and logs a warning, since failing every
    call would not make the file any better; the next change is read again.
    `refresh()` re-reads the file whatever its stat says: the client calls it after the
    server refused our credentials, as a token renewed within the same second and of the
    same length looks unchanged to stat().
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._headers: dict[str, str] = {}
        try:
            self._stamp, self._headers = self._read()
        except OSError as exc:
            raise ValueError(f"VSS header file {self.path}: cannot be read ({exc.strerror or type(exc).__name__})") from None

    def _read(self) -> tuple[tuple[int, int, int], dict[str, str]]:
        """The file's stamp and headers; OSError or ValueError if it cannot be used."""
        with self.path.open("rb") as file:
            info = os.fstat(file.fileno())
            raw = file.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"VSS header file {self.path}: not UTF-8 text") from None
        headers = parse_header_lines(text, f"VSS header file {self.path}")
        return (info.st_size, info.st_mtime_ns, info.st_ino), headers

    def _stat_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_size, info.st_mtime_ns, info.st_ino

    def _reload(self) -> bool:
        """Read the file again; True when the headers changed."""
        try:
            stamp, headers = self._read()
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            logger.warning("VSS header file %s: %s; keeping the headers read before", self.path, reason)
            # Remember what failed, so an unchanged broken file is not re-read per request.
            self._stamp = self._stat_stamp()
            return False
        changed = headers != self._headers
        self._stamp, self._headers = stamp, headers
        return changed

    def headers(self) -> Mapping[str, str]:
        if self._stat_stamp() != self._stamp:
            self._reload()
        return dict(self._headers)

    def refresh(self) -> bool:
        return self._reload()

    def __repr__(self) -> str:
        return f"HeaderFile({str(self.path)!r}, names={sorted(self._headers)!r})"


class CombinedAuth:
    """A signature plus extra headers; no signature while the extras carry an Authorization.

    The extras are the fixed headers overlaid by the header file's (the file is the
    fresher source), names compared case-insensitively. Whether to sign is decided per
    request, so a header file that gains or loses its Authorization line switches scheme.
    """

    def __init__(
        self, signature: SignatureAuth | None, fixed: Mapping[str, str], header_file: HeaderFile | None
    ) -> None:
        self._signature = signature
        self._fixed = FixedHeaders(fixed)
        self._file = header_file

    def headers(self) -> Mapping[str, str]:
        merged = {name.lower(): (name, value) for name, value in self._fixed.headers().items()}
        if self._file is not None:
            merged.update({name.lower(): (name, value) for name, value in self._file.headers().items()})
        out = dict(merged.values())
        if "authorization" not in merged and self._signature is not None:
            out.update(self._signature.headers())
        return out

    def refresh(self) -> bool:
        return self._file is not None and self._file.refresh()

    def __repr__(self) -> str:
        return f"CombinedAuth(signature={self._signature!r}, fixed={self._fixed!r}, header_file={self._file!r})"


def headers_auth(
    signing_key: bytes | None, fixed: Mapping[str, str], header_file: Path | None
) -> AuthProvider:
    """The provider for a node's configuration: signature auth plus extra headers.

    `fixed` headers go on every request and `header_file`'s lines (see `HeaderFile`)
    on top of them. An Authorization among them replaces the signature scheme (a
    JWT-fronted server); otherwise requests are signed with `signing_key` (None: not
    signed at all). Raises ValueError for a bad key, a bad header or an unusable file.
    """
    signature = SignatureAuth(signing_key) if signing_key is not None else None
    file = HeaderFile(header_file) if header_file is not None else None
    if file is None and not fixed and signature is not None:
        return signature
    return CombinedAuth(signature, fixed, file)
