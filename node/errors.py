"""Every failure the node reports, as a type with a stable name and an HTTP status.

The API turns any NodeError into `{"error": message, "code": status, "name": name}`;
the name is the class name, so it is stable as long as the class keeps its name.
Messages say what happened and what to do about it. The primitives of this package
raise these types themselves (a bad key name is `InvalidKey` wherever it is found), so
no layer translates one error into another.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of the node's own failures: catch it to handle any of them. `status` is the
    HTTP status the API answers with, `name` the stable name it reports."""

    status: int = 400

    @property
    def name(self) -> str:
        return type(self).__name__


# -- 400: the request itself is wrong -----------------------------------------------------


class InvalidRequest(NodeError):
    """The request is malformed: a missing or mistyped field, an unknown option."""

    status = 400


class InvalidNamespace(NodeError, ValueError):
    """A namespace breaks the naming rules: too long, characters outside [A-Za-z0-9_-],
    the reserved `_`, or a secondary namespace without a primary one."""

    status = 400


class InvalidKey(NodeError, ValueError):
    """A key name breaks the naming rules (empty, too long, characters outside the allowed set)."""

    status = 400


class InvalidPath(NodeError, ValueError):
    """A wallet file path is absolute, escapes the wallet directory, or names a symlink."""

    status = 400


class VssNotEnabled(NodeError):
    """The call needs VSS and the node runs without `--vss-url`."""

    status = 400


class Unauthorized(NodeError):
    """The API token is missing or wrong."""

    status = 401


class WrongPassword(NodeError, ValueError):
    """The sealed mnemonic does not open: a wrong password, or a damaged vault."""

    status = 401


class ForbiddenOrigin(NodeError):
    """A browser (or a DNS-rebinding page) tried to reach the API from another site."""

    status = 403


class ApiTokenRequired(NodeError):
    """A node without an API token was reached on an address other than loopback."""

    status = 403


class NotFound(NodeError):
    """No such key or wallet file."""

    status = 404


# -- 409: the node is not in a state to do this ----------------------------------------------


class NotInitialized(NodeError):
    """The node has no mnemonic yet: call init first."""

    status = 409


class AlreadyInitialized(NodeError):
    """The node was initialized before; init runs once per data dir."""

    status = 409


class NodeLocked(NodeError):
    """The node is locked (or was locked while the call ran): unlock it first."""

    status = 409


class NodeNotLocked(NodeError):
    """The call needs a locked node (unlock, clearing the fence) and this one is not."""

    status = 409


class OwnershipConflict(NodeError):
    """Another node holds the fence of this store."""

    status = 409


class OwnershipLost(NodeError):
    """This node was fenced out by a takeover; it no longer writes."""

    status = 409


class StoreDiverged(NodeError):
    """The VSS store was written by another node since this one last saw it."""

    status = 409


class VerifyInProgress(NodeError):
    """A verification is already running; one runs at a time."""

    status = 409


class WalletBackupUnreadable(NodeError):
    """The server holds a wallet backup this node could not read; uploading over it
    needs the operator's word."""

    status = 409


class ValueTooLarge(NodeError):
    """The value is over the node's size limit."""

    status = 413


class UnsupportedMediaType(NodeError):
    """A body-carrying API call came without `Content-Type: application/json`."""

    status = 415


# -- 5xx: the VSS server, or waiting on it ------------------------------------------------------


class RestoreFailed(NodeError):
    """The restore at unlock could not complete; nothing was made live."""

    status = 502


class ReplicationRejected(NodeError):
    """The VSS server refused this value (too large for it, or invalid); it stays owed."""

    status = 502


class VssUnavailable(NodeError):
    """The VSS server could not be reached or failed."""

    status = 503


class ReplicationTimeout(NodeError):
    """A durability=remote write is committed locally but did not reach VSS in time."""

    status = 504
