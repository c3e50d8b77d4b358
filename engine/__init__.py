"""ipgraph's generic graph engine. It knows nothing of diffusion and imports neither nodes/ nor server/.

Node authors import from here: ``node``, ``NodeInputs``, ``NodeOutputs``, ``Socket``, ``Output``, ``NodeContext``.
Runners import ``Graph``, ``Engine``, ``CancelToken``, the events, and ``run_batch`` / ``batch_signature``
(several graphs that differ only in declared inputs run together).
"""

from . import events
from .batching import batch_signature, run_batch
from .cache import OutputCache
from .executor import (
    CancelToken,
    Engine,
    InputMutatedError,
    NodeContext,
    NodeError,
    NodeFailed,
    RunCancelledError,
    RunResult,
    ValidationFailed,
)
from .graph import FORMAT, Graph, GraphBuildError, GraphFormatError, Link, NodeRef
from .node import REGISTRY, BatchPolicy, NodeInputs, NodeOutputs, NodeType, Output, Registry, Socket, node
from .validate import GraphProblem, validate

__all__ = [
    "BatchPolicy", "CancelToken", "Engine", "FORMAT", "Graph", "GraphBuildError", "GraphFormatError", "GraphProblem",
    "InputMutatedError", "Link", "NodeContext", "NodeError", "NodeFailed", "NodeInputs", "NodeOutputs",
    "NodeRef", "NodeType", "Output", "OutputCache", "REGISTRY", "Registry", "RunCancelledError", "RunResult",
    "Socket", "ValidationFailed", "batch_signature", "events", "node", "run_batch", "validate",
]
