"""The node's actors, and `Node`, which runs them while the node is unlocked.

`Node` is the library entry: `async with Node.open(NodeConfig(...)) as node: ...`.
"""

from actors.node import Node, NodeState, WalletFile

__all__ = ["Node", "NodeState", "WalletFile"]
