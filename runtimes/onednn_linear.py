"""Torch linear layers on oneDNN instead of aten's BLAS call (CPU, FP32 only).

On the CPU ``aten::linear`` calls MKL's sgemm, which is slow at the batches a server runs (1-64
rows) on this project's AMD EPYC hosts. Why was not traced: MKL is known to take generic code
paths on non-Intel CPUs, and a small-batch GEMM pays for packing the weights on every call.
oneDNN's linear (``mkldnn::_linear_pointwise``, in every CPU build of torch)
ran the anchors' MLP 784-2048-2048-10 20-25% faster at batch 1-32 on one thread, and the
784-4096³-10 MLP 1.4-1.6x faster at batch 8-64. Triton's PyTorch backend calls ``aten::linear``.
The measurements and the default are in docs/decisions.md.

In a TorchScript module each ``aten::linear`` in every method of the module and its submodules
becomes a branch; in a ``torch.export`` program's module each ``aten.linear`` call becomes a call
of ``onednn_linear`` below, which branches the same way. The oneDNN branch runs when the input
and the weight are FP32 and the input is not empty; any other input takes the original
``aten::linear``, so the model's behaviour is unchanged.
Results differ from MKL's in the last bits, as with any other GEMM or thread count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where the rewrite runs, so the benchmark harness can read the names
    import torch

#: Parameter ``linear_kernel``: the CPU kernel of a torch model's linear layers.
LINEAR_KERNELS = ("onednn", "aten")
DEFAULT_LINEAR_KERNEL = "onednn"

_ONEDNN_OP = "mkldnn::_linear_pointwise"

_PATTERN = """
graph(%x, %w, %b):
  %r = aten::linear(%x, %w, %b)
  return (%r)"""

# 6 is torch.float32's ScalarType code. "none" is the post-op: no activation is fused. All three
# checks are cheap on any tensor, so they are computed without short-circuiting.
_REPLACEMENT = """
graph(%x, %w, %b):
  %fp32 : int = prim::Constant[value=6]()
  %zero : int = prim::Constant[value=0]()
  %no_post_op : str = prim::Constant[value="none"]()
  %default_algorithm : str = prim::Constant[value=""]()
  %x_dtype : int = prim::dtype(%x)
  %x_fp32 : bool = aten::eq(%x_dtype, %fp32)
  %w_dtype : int = prim::dtype(%w)
  %w_fp32 : bool = aten::eq(%w_dtype, %fp32)
  %elements : int = aten::numel(%x)
  %not_empty : bool = aten::gt(%elements, %zero)
  %both_fp32 : bool = aten::__and__(%x_fp32, %w_fp32)
  %use_onednn : bool = aten::__and__(%both_fp32, %not_empty)
  %r : Tensor = prim::If(%use_onednn)
    block0():
      %no_scalars : Scalar?[] = prim::ListConstruct()
      %y : Tensor = mkldnn::_linear_pointwise(%x, %w, %b, %no_post_op, %no_scalars, %default_algorithm)
      -> (%y)
    block1():
      %z : Tensor = aten::linear(%x, %w, %b)
      -> (%z)
  return (%r)"""


def linear_kernel(parameters: Mapping[str, str | int | float | bool]) -> str:
    """The model's ``linear_kernel`` parameter, checked; a ValueError names the choices."""
    kernel = str(parameters.get("linear_kernel", DEFAULT_LINEAR_KERNEL)).lower()
    if kernel not in LINEAR_KERNELS:
        raise ValueError(f"parameters.linear_kernel is {kernel!r}; use one of {', '.join(LINEAR_KERNELS)}")
    return kernel


def use_onednn_linear(module: torch.jit.ScriptModule) -> int:
    """Rewrite ``module``'s linear layers in place (call it before the first run); returns how many.

    A graph rewritten before is left as it is. Returns 0 without touching the module when this
    torch has no oneDNN.
    """
    import torch

    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    rewritten = 0
    for graph in _graphs(module):
        if _count(graph, _ONEDNN_OP):
            continue  # rewritten already: its fallback branches hold aten::linear on purpose
        torch._C._jit_pass_custom_pattern_based_rewrite_graph(_PATTERN, _REPLACEMENT, graph)
        rewritten += _count(graph, _ONEDNN_OP)
    return rewritten


def use_onednn_linear_fx(module: torch.fx.GraphModule) -> int:
    """The same for a ``torch.export`` program's module (an FX graph); returns how many calls moved."""
    import torch

    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    moved = 0
    for graph_module in module.modules():
        if not isinstance(graph_module, torch.fx.GraphModule):
            continue
        nodes = [n for n in graph_module.graph.nodes
                 if n.op == "call_function" and n.target is torch.ops.aten.linear.default]
        for node in nodes:
            node.target = onednn_linear
        if nodes:
            graph_module.recompile()
            moved += len(nodes)
    return moved


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``aten.linear`` on oneDNN where it can run there (FP32, not empty), else ``aten.linear`` itself."""
    import torch

    if x.dtype == torch.float32 and weight.dtype == torch.float32 and x.numel() > 0:
        result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    else:
        result = torch.ops.aten.linear.default(x, weight, bias)
    return result


def onednn_layers(module: torch.jit.ScriptModule) -> int:
    """How many of the module's linear layers run on oneDNN (each graph counted once)."""
    return sum(_count(graph, _ONEDNN_OP) for graph in _graphs(module))


def _graphs(module: torch.jit.ScriptModule) -> list[torch.Graph]:
    """Every method's graph of the module and its submodules, once each: submodules of one class share theirs."""
    graphs: dict[tuple[str, str], torch.Graph] = {}
    for submodule in module.modules():
        script: Any = getattr(submodule, "_c", None)
        if script is None:
            continue
        for name in script._method_names():
            graphs.setdefault((script._type().qualified_name(), name), script._get_method(name).graph)
    return list(graphs.values())


def _count(graph: torch.Graph, kind: str) -> int:
    """Nodes of ``kind`` in ``graph``, inside branches and loops too."""
    total = 0
    pending = [graph.block()]
    while pending:
        block = pending.pop()
        for node in block.nodes():
            total += node.kind() == kind
            pending.extend(node.blocks())
    return total
