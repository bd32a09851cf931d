"""Which storage engine a database URL names: the one place that knows both engines.

It sits above `backend.py` and the engines, so the engines import the interface and
the interface imports neither of them.
"""

from __future__ import annotations

from vss.server.backend import Backend, redact_url


def open_backend(url: str) -> Backend:
    """The backend a URL names: `sqlite:///PATH` (`sqlite:////abs/path`, `sqlite:///:memory:`)
    or `postgresql://user@host:port/db` (`postgres://` too; `?schema=NAME` picks a schema).

    Raises ValueError for any other URL. Nothing is opened until `open()`.
    """
    if url.startswith("sqlite:///"):
        from vss.server.sqlite import SqliteBackend

        path = url[len("sqlite:///") :]
        if not path:
            raise ValueError("sqlite URL names no file: use sqlite:///PATH or sqlite:///:memory:")
        return SqliteBackend(path)
    if url.startswith(("postgresql://", "postgres://")):
        from vss.server.postgres import PostgresBackend

        return PostgresBackend.from_url(url)
    raise ValueError(f"unsupported database URL {redact_url(url)!r}: use sqlite:///PATH or postgresql://...")
