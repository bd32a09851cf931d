"""The node's actors and the supervisor that runs them; `Node` is the library entry."""

from actors.supervisor import Node, NodeState

__all__ = ["Node", "NodeState"]
