"""Platform ``torch_export``: ``model.pt2``, a program saved by ``torch.export.save``.

An exported program knows its inputs' names (``forward``'s arguments), dtypes and shapes
(a dynamic dimension reads as -1), and its outputs' dtypes and shapes; outputs have
names only when ``forward`` returns a dict. So the config may leave the inputs out, and
the outputs too for a dict-returning program; where it lists them they are checked
against the program. Inputs are passed by name when the config uses ``forward``'s
argument names, else in config order. Threads, devices, output mapping and linear layers are those of
the TorchScript adapter.
"""

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from gateway.contract import LoadModel, Signature, TensorSpec
from gateway.logs import log_event
from runtimes.base import InvalidInput, ModelLoadError
from runtimes.onednn_linear import use_onednn_linear_fx
from runtimes.torchscript import DATATYPE_OF, TorchAdapter, _first_line, log


class _Held(logging.Filter):
    """Keeps the records torch.export logs while loading, instead of letting its handlers print them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def _load_program(path: Path) -> torch.export.ExportedProgram:
    """``torch.export.load``, with its failure reported as one ModelLoadError naming the file.

    On a bad archive torch.export logs the real cause as a warning with a traceback, then
    raises a generic error; the cause is what the error message needs.
    """
    logger = logging.getLogger("torch.export")
    held = _Held()
    logger.addFilter(held)
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # zip, pickle, JSON and schema errors all mean "not a usable .pt2"
        causes = [r.exc_info[1] for r in held.records if r.exc_info and r.exc_info[1] is not None]
        raise ModelLoadError(f"{path}: not a torch.export program: {_first_line(causes[0] if causes else exc)}") \
            from None
    finally:
        logger.removeFilter(held)


class TorchExportAdapter(TorchAdapter):
    """An ``ExportedProgram``'s module, moved to the device and run under ``torch.inference_mode()``."""

    MODEL_FILE = "model.pt2"

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        program = _load_program(self.path)
        arguments = list(program.module_call_graph[0].signature.forward_arg_names)
        user_inputs = set(program.graph_signature.user_inputs)
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
        if len(placeholders) != len(arguments):
            raise ModelLoadError(f"{self.path}: the program's inputs {arguments} are not all tensors")
        input_specs = [self._tensor_spec(name, node.meta.get("val")) for name, node in
                       zip(arguments, placeholders, strict=True)]
        input_specs = self._rename_inputs(arguments, input_specs)
        self._input_shapes = {s.name: s.shape for s in input_specs}
        [output_node] = [n for n in program.graph.nodes if n.op == "output"]
        output_values = [node.meta.get("val") for node in output_node.args[0]]
        names = self._output_names(program.call_spec.out_spec, len(output_values))
        output_specs = [self._tensor_spec(name, value) for name, value in zip(names, output_values, strict=True)]
        self.output_names = names
        self.output_datatypes = {s.name: s.datatype for s in output_specs}
        self._signature = Signature(tuple(input_specs), tuple(output_specs))
        try:
            self._module = program.module().to(self.device)
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: cannot place the program on {spec.device}: {exc}") from None
        if self.onednn_linear:
            calls, packed = use_onednn_linear_fx(self._module, self.pack_weights)
            if calls:
                log_event(log, "linear_layers_on_onednn", model=spec.model_name, layers=calls, packed=packed)

    def signature(self) -> Signature:
        return self._signature

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        for name, array in inputs.items():
            shape = self._input_shapes[name]
            if array.ndim != len(shape) or any(want not in (-1, got) for got, want in zip(array.shape, shape,
                                                                                          strict=True)):
                raise InvalidInput(f"input '{name}': shape {list(array.shape)} does not fit the program's "
                                   f"{list(shape)}")
        return super().execute(inputs, outputs)

    def run(self, args: list[torch.Tensor], kwargs: dict[str, torch.Tensor]) -> Any:
        return self._module(*args)

    def _rename_inputs(self, arguments: list[str], specs: list[TensorSpec]) -> list[TensorSpec]:
        """Serve the inputs under the config's names: ``forward``'s own, or the config's in order."""
        configured = [name for name, _ in self.spec.inputs or []]
        self.input_names = arguments
        if not configured or sorted(configured) == sorted(arguments):
            return specs
        if len(configured) != len(arguments):
            raise ModelLoadError(f"{self.path}: the program takes {len(arguments)} input(s) {arguments}, "
                                 f"but the config lists {len(configured)}: {configured}")
        self.input_names = configured
        return [TensorSpec(name, s.datatype, s.shape) for name, s in zip(configured, specs, strict=True)]

    def _output_names(self, out_spec: pytree.TreeSpec, count: int) -> list[str]:
        configured = [name for name, _ in self.spec.outputs or []]
        if out_spec.type is dict and out_spec.num_leaves == count and all(
            child.is_leaf() for child in out_spec.children()
        ):
            return [str(key) for key in out_spec.context]
        if not configured:
            raise ModelLoadError(f"{self.path}: the program's outputs have no names (forward does not return a "
                                 "dict); the config must list the outputs")
        if len(configured) != count:
            raise ModelLoadError(f"{self.path}: the program returns {count} output(s), but the config lists "
                                 f"{len(configured)}: {configured}")
        return configured

    def _tensor_spec(self, name: str, value: Any) -> TensorSpec:
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"{self.path}: '{name}' is not a tensor in the exported program")
        datatype = DATATYPE_OF.get(value.dtype)
        if datatype is None:
            raise ModelLoadError(f"{self.path}: tensor '{name}' has dtype {value.dtype}, which cannot be served")
        return TensorSpec(name, datatype, tuple(d if isinstance(d, int) else -1 for d in value.shape))
