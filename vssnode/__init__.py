"""The vssnode program: the `vssnode` command line, the node's HTTP API and its ASGI
entry point. It assembles the actors (`actors`) over the node's primitives (`node`)
and the VSS protocol (`vss`); nothing below imports it."""
