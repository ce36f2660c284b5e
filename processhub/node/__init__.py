"""The hub node: the parts that run processes on one member of the cluster (see node.py for the map)."""
from .node import EmbeddedNode, Node

__all__ = ["Node", "EmbeddedNode"]
