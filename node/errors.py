"""Every failure the node reports, as a type with a stable name and an HTTP status.

The API turns any NodeError into `{"error": message, "code": status, "name": name}`;
the name is the class name, so it is stable as long as the class keeps its name.
Messages say what happened and what to do about it.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of the node's own failures."""

    status: int = 400

    @property
    def name(self) -> str:
        return type(self).__name__


class InvalidRequest(NodeError):
    status = 400


class InvalidNamespace(NodeError):
    status = 400


class InvalidKey(NodeError):
    status = 400


class InvalidPath(NodeError):
    status = 400


class VssNotEnabled(NodeError):
    status = 400


class Unauthorized(NodeError):
    status = 401


class WrongPassword(NodeError):
    status = 401


class NotFound(NodeError):
    status = 404


class NotInitialized(NodeError):
    status = 409


class AlreadyInitialized(NodeError):
    status = 409


class NodeLocked(NodeError):
    status = 409


class NodeNotLocked(NodeError):
    status = 409


class OwnershipConflict(NodeError):
    """Another node holds the fence of this store."""

    status = 409


class OwnershipLost(NodeError):
    """This node was fenced out by a takeover; it no longer writes."""

    status = 409


class ValueTooLarge(NodeError):
    status = 413


class VssUnavailable(NodeError):
    """The VSS server could not be reached or failed."""

    status = 503


class RestoreFailed(NodeError):
    """The restore at unlock could not complete; nothing was made live."""

    status = 502
