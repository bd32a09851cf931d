"""Who may call the node's API: the token, or the same-origin rules of a loopback node.

With an API token, a request must carry `Authorization: Bearer TOKEN` (compared in
constant time); nothing else is asked, so scripts and other machines can call it.

Without one (the default), only this machine may call: a request that came in on an
address other than loopback (the ASGI scope's `server`: `hypercorn vssnode.asgi:app
--bind 0.0.0.0:3001` reached from the network) is refused with `403 ApiTokenRequired`.
`vssnode run` refuses such a `--listen` at start already; this check holds under any
ASGI server. Then the browser on the operator's machine is the threat: any page it
opens can send requests to `127.0.0.1:3001`. So a request
- must name this server in `Host`: the address it came in on (the ASGI scope's
  `server`, which is right under plain hypercorn too), `localhost`, `127.0.0.1` or
  `[::1]`, with its port. A DNS-rebinding page names its own host and is refused;
- must not carry an `Origin` other than `http://` + that Host, nor
  `Sec-Fetch-Site: cross-site`, which browsers add to another site's requests.
  Each value of a repeated header is checked; two Host headers are refused.
Refusals are `403 ForbiddenOrigin`; nothing runs.
"""

from __future__ import annotations

import hmac
from typing import Any

from node import errors
from vss.serve import is_loopback_host

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def check_caller(request: Any, api_token: str | None) -> None:
    """Raise Unauthorized or ForbiddenOrigin unless the caller may use the API."""
    if api_token is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_token}".encode()):
            raise errors.Unauthorized("missing or wrong API token (Authorization: Bearer ...)")
        return
    server = request.scope.get("server")
    if server and not is_loopback_host(server[0]):
        raise errors.ApiTokenRequired(
            "this node has no API token, so it answers on loopback only; set one (--api-token-file or "
            "VSSNODE_API_TOKEN) to call it from other machines"
        )
    # Every value of a repeated header counts: a check of the first one alone would let a
    # request pass that another reader of the headers (a proxy, the app) takes otherwise.
    hosts = request.headers.getlist("Host")
    host = hosts[0] if len(hosts) == 1 else ""
    if host not in allowed_hosts(server):
        raise errors.ForbiddenOrigin(
            f"Host {', '.join(hosts)[:100]!r} is not this node; call it as http://127.0.0.1:PORT (or set an API token)"
        )
    if any(origin != f"http://{host}" for origin in request.headers.getlist("Origin")):
        raise errors.ForbiddenOrigin("requests from another site's page are refused; set an API token for remote use")
    if any(site.lower() == "cross-site" for site in request.headers.getlist("Sec-Fetch-Site")):
        raise errors.ForbiddenOrigin("requests from another site's page are refused; set an API token for remote use")


def allowed_hosts(server: tuple[str, int | None] | None) -> set[str]:
    """Every spelling of this server's Host header: its own address and the loopback names."""
    if not server:  # no TCP address (an in-process test client): only the bare loopback names
        return set(_LOOPBACK_NAMES)
    address, port = server[0], server[1]
    shown = f"[{address}]" if ":" in address else address
    names = {shown, *_LOOPBACK_NAMES}
    if port is None:
        return names
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts |= names
    return hosts
