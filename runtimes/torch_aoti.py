"""Platform ``torch_aoti``: ``model.pt2``, an AOTInductor package (``aoti_compile_and_package``).

The package is compiled code for one device type; it is refused on an instance of another.
It knows its inputs' dtypes and shapes (see ``aoti_package``) but not their names, nor
anything about its outputs, so the config lists the inputs (in the order ``forward`` takes
them) and the outputs; the inputs' dtypes and fixed sizes are checked against the package.
The batch dimension must have been exported dynamic (``torch.export.Dim``) with a range that
holds ``max_batch_size``. Inductor compiles a dynamic dimension for sizes of at least 2 (its
0/1 specialisation), so a smaller batch is padded with zero rows up to the compiled minimum
and the padding cut from the outputs: the model never runs outside the range it was compiled for.

Instances: an AOTInductor model container runs one call at a time (its single runner is
locked), so each instance gets its own loader, loaded with ``run_single_threaded`` and never
used by two threads at once. Threads and devices are those of the other torch platforms.
"""

import logging
import queue
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from gateway.contract import LoadModel, Signature, TensorSpec
from gateway.logs import log_event
from runtimes.aoti_package import CompiledInput, read_package
from runtimes.base import InvalidInput, ModelLoadError, cuda_index, pad_rows
from runtimes.torchscript import TorchAdapter, _first_line

log = logging.getLogger("tensorgate.torch")


class TorchAotiAdapter(TorchAdapter):
    """An AOTInductor package, one loader per instance, called with the flat list of input tensors."""

    MODEL_FILE = "model.pt2"

    def __init__(self, spec: LoadModel) -> None:
        super().__init__(spec)
        package = read_package(self.path)
        wanted = self.device.type
        if package.device != wanted:
            raise ModelLoadError(f"{self.path}: the package was compiled for {package.device}, but the instance "
                                 f"runs on {spec.device}; compile it with the example inputs on {wanted}")
        self.bind_inputs([name for name, _ in spec.inputs or []])
        self.by_name = False  # the package takes a flat list, in the order forward takes its arguments
        self._compiled = package.inputs
        if package.inputs is None:
            log_event(log, "aoti_inputs_unknown", level=logging.WARNING, model=spec.model_name,
                      path=str(self.path), detail="no input checks in the package; the config is not checked")
        else:
            self._check_config(package.inputs)
        self._min_rows = package.inputs[0].dims[0].low if package.inputs and spec.max_batch_size > 0 else 0
        self._loaders: queue.SimpleQueue[Any] = queue.SimpleQueue()
        index = cuda_index(spec.device)
        for _ in range(spec.instances):
            try:
                compiled = torch._inductor.aoti_load_package(str(self.path), run_single_threaded=True,
                                                             device_index=-1 if index is None else index)
            except Exception as exc:  # the loader raises RuntimeError for a package it cannot load
                raise ModelLoadError(f"{self.path}: cannot load the AOTInductor package: {_first_line(exc)}") \
                    from None
            self._loaders.put(compiled.loader)
        self._out_spec = pytree.treespec_loads(compiled.loader.get_call_spec()[1])
        if self._out_spec.num_leaves != len(self.output_names):
            raise ModelLoadError(f"{self.path}: the package returns {self._out_spec.num_leaves} output(s), but the "
                                 f"config lists {len(self.output_names)}: {self.output_names}")

    def signature(self) -> Signature | None:
        if self._compiled is None:
            return None
        inputs = tuple(TensorSpec(name, compiled.datatype, tuple(d.low if d.fixed else -1 for d in compiled.dims))
                       for name, compiled in zip(self.input_names, self._compiled, strict=True))
        return Signature(inputs, ())  # the package does not describe its outputs: the config's are served

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        rows = next(iter(inputs.values())).shape[0] if self._min_rows else 0
        if self._compiled is not None:
            for name, compiled in zip(self.input_names, self._compiled, strict=True):
                self._check_shape(name, inputs[name].shape, compiled)
        if rows < self._min_rows:
            padded = {name: pad_rows(array, self._min_rows) for name, array in inputs.items()}
            return {name: array[:rows] for name, array in super().execute(padded, outputs).items()}
        return super().execute(inputs, outputs)

    def run(self, args: list[torch.Tensor], kwargs: dict[str, torch.Tensor]) -> Any:
        loader = self._loaders.get()  # an idle instance's; never blocks: one batch per instance at a time
        try:
            return pytree.tree_unflatten(loader.boxed_run(args), self._out_spec)
        finally:
            self._loaders.put(loader)

    def _check_config(self, compiled: tuple[CompiledInput, ...]) -> None:
        """The config's inputs must be the package's, and its batch range must hold ``max_batch_size``."""
        configured = self.spec.inputs or []
        if len(configured) != len(compiled):
            raise ModelLoadError(f"{self.path}: the package takes {len(compiled)} input(s), but the config lists "
                                 f"{len(configured)}: {[name for name, _ in configured]}")
        max_batch = self.spec.max_batch_size
        if max_batch == 0:
            return
        for (name, _), tensor in zip(configured, compiled, strict=True):
            batch = tensor.dims[0] if tensor.dims else None
            if batch is None or batch.fixed:
                raise ModelLoadError(f"{self.path}: input '{name}' was compiled with a fixed batch of "
                                     f"{batch or 'none'}, but max_batch_size is {max_batch} (export the batch "
                                     "dimension as a torch.export.Dim, or set max_batch_size: 0)")
            if batch.high is not None and batch.high < max_batch:
                raise ModelLoadError(f"{self.path}: compiled for batch {batch} but max_batch_size is {max_batch} "
                                     f"(input '{name}')")

    def _check_shape(self, name: str, shape: tuple[int, ...], compiled: CompiledInput) -> None:
        """Refuse a size outside a compiled range (the package would run it unchecked); a small batch is padded."""
        fits = len(shape) == len(compiled.dims) and all(
            (d == 0 and self._min_rows) or (dim.low <= size and (dim.high is None or size <= dim.high))
            for d, (size, dim) in enumerate(zip(shape, compiled.dims, strict=True)))
        if not fits:
            raise InvalidInput(f"input '{name}': shape {list(shape)} does not fit the package's "
                               f"[{', '.join(str(d) for d in compiled.dims)}]")
