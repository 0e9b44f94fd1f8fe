"""Torch linear layers on oneDNN instead of aten's BLAS call (CPU, FP32 only).

On the CPU ``aten::linear`` calls MKL's sgemm, which is slow at the batches a server runs (1-64
rows) on this project's AMD EPYC hosts. Why was not traced: MKL is known to take generic code
paths on non-Intel CPUs, and a small-batch GEMM pays for packing the weights on every call.
oneDNN's linear (``mkldnn::_linear_pointwise``, in every CPU build of torch)
ran the anchors' MLP 784-2048-2048-10 20-25% faster at batch 1-32 on one thread, and the
784-4096³-10 MLP 1.4-1.6x faster at batch 8-64. Triton's PyTorch backend calls ``aten::linear``.
The measurements and the default are in docs/decisions.md.

Where the weight is an attribute of a module (``self.weight``, as in every ``nn.Linear``) it is
also copied once, at load, into oneDNN's blocked layout (``mkldnn::_reorder_linear_weight``).
The oneDNN call on a plain weight reorders it on every call, a pass over all the weights; on a
packed copy the anchors' MLP ran 35-40% faster again at batch 8 and 16. A one-row input keeps the
plain weight, which is faster for a single row. The copy costs the weights' memory once more, and
it is made only for weights that no method assigns or changes in place.

In a TorchScript module each ``aten::linear`` in every method of the module and its submodules
becomes a branch; in a ``torch.export`` program's module each ``aten.linear`` call becomes a call
of ``onednn_linear`` below, which branches the same way. The oneDNN branch runs when the input
and the weight are FP32 and the input is not empty; any other input takes the original
``aten::linear``, so the model's behaviour is unchanged.
Results differ from MKL's in the last bits, as with any other GEMM or thread count.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # torch is imported where the rewrite runs, so the benchmark harness can read the names
    import torch

#: Parameter ``linear_kernel``: the CPU kernel of a torch model's linear layers. ``onednn_unpacked``
#: is oneDNN without the packed copies of the weights (their memory once more).
LINEAR_KERNELS = ("onednn", "onednn_unpacked", "aten")
DEFAULT_LINEAR_KERNEL = "onednn"

_ONEDNN_OP = "mkldnn::_linear_pointwise"
#: A module attribute holding the packed copy of its attribute ``weight`` is named ``_PACKED + "weight"``.
_PACKED = "_tensorgate_onednn_"

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

# What a oneDNN call on a weight attribute becomes once the attribute has a packed copy: one row
# (``numel(x)`` no more than the weight's input features) on the plain weight, more on the copy.
_ROWS_ON_PACKED = """
graph(%x, %w, %packed, %b):
  %last : int = prim::Constant[value=-1]()
  %no_post_op : str = prim::Constant[value="none"]()
  %default_algorithm : str = prim::Constant[value=""]()
  %in_features : int = aten::size(%w, %last)
  %elements : int = aten::numel(%x)
  %one_row : bool = aten::le(%elements, %in_features)
  %r : Tensor = prim::If(%one_row)
    block0():
      %no_scalars : Scalar?[] = prim::ListConstruct()
      %row : Tensor = mkldnn::_linear_pointwise(%x, %w, %b, %no_post_op, %no_scalars, %default_algorithm)
      -> (%row)
    block1():
      %none_either : Scalar?[] = prim::ListConstruct()
      %rows : Tensor = mkldnn::_linear_pointwise(%x, %packed, %b, %no_post_op, %none_either, %default_algorithm)
      -> (%rows)
  return (%r)"""


class Rewritten(NamedTuple):
    """What a rewrite did: linear layers moved to oneDNN, and how many of them read a packed weight."""

    layers: int
    packed: int


def linear_kernel(parameters: Mapping[str, str | int | float | bool]) -> str:
    """The model's ``linear_kernel`` parameter, checked; a ValueError names the choices."""
    kernel = str(parameters.get("linear_kernel", DEFAULT_LINEAR_KERNEL)).lower()
    if kernel not in LINEAR_KERNELS:
        raise ValueError(f"parameters.linear_kernel is {kernel!r}; use one of {', '.join(LINEAR_KERNELS)}")
    return kernel


def use_onednn_linear(module: torch.jit.ScriptModule, pack: bool = True) -> Rewritten:
    """Rewrite ``module``'s linear layers in place (call it before the first run), with packed
    copies of the weights unless ``pack`` is False.

    A graph rewritten before is left as it is. Does nothing when this torch has no oneDNN. The
    module must be the only one of its classes, as one ``torch.jit.load`` makes it (its own
    compilation unit): graphs and the packed copies' attributes belong to the classes, and another
    module of the same classes would find the attributes unset.
    """
    import torch

    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return Rewritten(0, 0)
    graphs = _graphs(module)
    fresh = []
    for graph in graphs:
        if _count(graph, _ONEDNN_OP):
            continue  # rewritten already: its fallback branches hold aten::linear on purpose
        torch._C._jit_pass_custom_pattern_based_rewrite_graph(_PATTERN, _REPLACEMENT, graph)
        if _count(graph, _ONEDNN_OP):
            fresh.append(graph)
    layers = sum(_count(graph, _ONEDNN_OP) for graph in fresh)
    return Rewritten(layers, _pack_weights(module, graphs, fresh) if pack else 0)


def _pack_weights(module: torch.jit.ScriptModule, graphs: list[torch.Graph], fresh: list[torch.Graph]) -> int:
    """Give each oneDNN call in ``fresh`` whose weight is a module's attribute a packed copy of it.

    A class's graph is shared by all its instances, so the copy is an attribute of the class too
    (every instance gets its own). ``graphs`` (all of the module's) are searched for methods that
    assign the attribute or change it in place: such a weight is left unpacked. Returns how many
    calls read a packed copy.
    """
    import torch

    instances: dict[str, list[Any]] = {}
    for submodule in module.modules():
        script = getattr(submodule, "_c", None)
        if script is not None:
            instances.setdefault(script._type().qualified_name(), []).append(script)
    changing = _changed_attributes(graphs)
    rows_on_packed = torch._C.parse_ir(_ROWS_ON_PACKED)
    #: For each (class, attribute) seen: whether any instance got a packed copy.
    made: dict[tuple[str, str], bool] = {}
    packed = 0
    for graph in fresh:
        for call in _nodes(graph, _ONEDNN_OP):
            source = call.inputsAt(1).node()
            owner = source.input() if source.kind() == "prim::GetAttr" else None
            owner_type = owner.type() if owner is not None else None
            if (owner is None or not isinstance(owner_type, torch._C.ClassType)
                    or not isinstance(source.output().type(), torch._C.TensorType)):
                continue
            attribute = source.s("name")
            key = (owner_type.qualified_name(), attribute)
            if key[0] not in instances or key in changing:
                continue
            if key not in made:  # the first call on this class's attribute: copy every instance's weight
                plain = [script.getattr(attribute) for script in instances[key[0]]]
                copies = [_packed(weight) for weight in plain]
                made[key] = any(copy is not weight for copy, weight in zip(copies, plain, strict=True))
                if made[key]:  # an instance oneDNN cannot pack holds its plain weight there
                    for script, copy in zip(instances[key[0]], copies, strict=True):
                        script._register_attribute(_PACKED + attribute, torch._C.TensorType.get(), copy)
            if not made[key]:
                continue  # no instance's weight could be packed: the call stays as it is
            getter = graph.create("prim::GetAttr", [owner], 1)
            getter.s_("name", _PACKED + attribute)
            getter.output().setType(torch._C.TensorType.get())
            getter.insertBefore(call)
            x, weight, bias = call.inputsAt(0), call.inputsAt(1), call.inputsAt(2)
            with graph.insert_point_guard(call):
                [result] = graph.insertGraph(rows_on_packed, [x, weight, getter.output(), bias])
            call.output().replaceAllUsesWith(result)
            call.destroy()
            packed += 1
        torch._C._jit_pass_dce(graph)  # the replaced call's empty list of post-op scalars
    return packed


def _changed_attributes(graphs: list[torch.Graph]) -> set[tuple[str, str]]:
    """(class, attribute) pairs that some method assigns, or changes in place (``aten::add_``, ``aten::copy_``...)."""
    import torch

    changed = set()
    for graph in graphs:
        for node in _nodes(graph, "prim::SetAttr") + _nodes(graph, "prim::GetAttr"):
            owner_type = node.inputsAt(0).type()
            if not isinstance(owner_type, torch._C.ClassType):
                continue
            in_place = node.kind() == "prim::GetAttr" and any(
                use.user.kind().endswith("_") and not use.user.kind().endswith("__")
                for use in node.output().uses())
            if node.kind() == "prim::SetAttr" or in_place:
                changed.add((owner_type.qualified_name(), node.s("name")))
    return changed


def _packed(weight: Any) -> Any:
    """``weight`` in oneDNN's blocked layout if it is a 2-D FP32 CPU tensor that oneDNN takes, else
    ``weight`` itself (the call's branch sends anything but FP32 to ``aten::linear``, which never
    reads the copy)."""
    import torch

    if (isinstance(weight, torch.Tensor) and weight.dtype == torch.float32 and weight.dim() == 2
            and weight.device.type == "cpu" and weight.layout == torch.strided):
        try:
            with torch.no_grad():
                return torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        except RuntimeError:  # a shape oneDNN has no primitive for (an empty weight): the call reads it plain
            pass
    return weight


def use_onednn_linear_fx(module: torch.fx.GraphModule, pack: bool = True) -> Rewritten:
    """The same for a ``torch.export`` program's module (an FX graph): each ``aten.linear`` call
    becomes ``onednn_linear``, or ``onednn_linear_packed`` on a packed copy of its weight where the
    weight is an attribute of the module (export programs' graphs never change their weights)."""
    import torch

    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return Rewritten(0, 0)
    layers = packed = 0
    for graph_module in module.modules():
        if not isinstance(graph_module, torch.fx.GraphModule):
            continue
        calls = [n for n in graph_module.graph.nodes
                 if n.op == "call_function" and n.target is torch.ops.aten.linear.default]
        copies: dict[str, torch.fx.Node] = {}
        for call in calls:
            layers += 1
            call.target = onednn_linear
            x, weight, *bias = call.args
            if not pack or not isinstance(weight, torch.fx.Node) or weight.op != "get_attr":
                continue
            target = str(weight.target)
            plain = functools.reduce(getattr, target.split("."), graph_module)
            copy = _packed(plain)
            if copy is plain:
                continue
            if target not in copies:
                name = _PACKED + target.replace(".", "_")
                graph_module.register_buffer(name, copy, persistent=False)
                with graph_module.graph.inserting_after(weight):
                    copies[target] = graph_module.graph.get_attr(name)
            call.target = onednn_linear_packed
            call.args = (x, weight, copies[target], *bias)
            packed += 1
        if calls:
            graph_module.recompile()
    return Rewritten(layers, packed)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``aten.linear`` on oneDNN where it can run there (FP32, not empty), else ``aten.linear`` itself."""
    import torch

    if x.dtype == torch.float32 and weight.dtype == torch.float32 and x.numel() > 0:
        result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    else:
        result = torch.ops.aten.linear.default(x, weight, bias)
    return result


def onednn_linear_packed(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """``onednn_linear`` reading ``packed`` (``weight`` in oneDNN's layout) for more than one row."""
    import torch

    if x.dtype == torch.float32 and x.numel() > weight.shape[-1]:
        result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return result
    return onednn_linear(x, weight, bias)


def onednn_layers(module: torch.jit.ScriptModule) -> Rewritten:
    """How many of the module's linear layers run on oneDNN, and on a packed weight (each graph counted once)."""
    layers = packed = 0
    for graph in _graphs(module):
        for call in _nodes(graph, _ONEDNN_OP):
            weight = call.inputsAt(1).node()
            on_copy = weight.kind() == "prim::GetAttr" and weight.s("name").startswith(_PACKED)
            packed += on_copy
            layers += not on_copy  # a packed layer's one-row call reads the plain weight
    return Rewritten(layers, packed)


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
    return len(_nodes(graph, kind))


def _nodes(graph: torch.Graph, kind: str) -> list[torch.Node]:
    """The nodes of ``kind`` in ``graph``, inside branches and loops too."""
    found = []
    pending = [graph.block()]
    while pending:
        block = pending.pop()
        for node in block.nodes():
            if node.kind() == kind:
                found.append(node)
            pending.extend(node.blocks())
    return found
