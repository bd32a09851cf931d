"""The bundled VSS server: a small ASGI app (`app.create_app`) over one storage interface
(`backend.Backend`) with SQLite (`sqlite.py`) and PostgreSQL (`postgres.py`) engines,
run by `vssnode vss-server`, `python -m vss.server` or `hypercorn vss.server.asgi:app`.
"""
