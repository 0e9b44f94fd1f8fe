"""The runtime worker process: loads models of one framework and executes their batches.

Started by the gateway as ``python -m runtimes.worker FRAMEWORK FD``: FD is its end of a
socket pair. The main thread reads calls; loads run on one loader thread (so a slow load
never blocks the batches of models already loaded) and each model executes on its own
pool of ``instances`` threads. Replies go back tagged with the call's id, in any order.
The process exits when the gateway closes the socket.
"""

import contextlib
import importlib
import logging
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.logs import log_event
from gateway.workers.ipc import Envelope, Execute, ExecuteResult, Failure, LoadModel, SocketChannel, UnloadModel
from runtimes.base import InvalidInput, ModelLoadError, RuntimeAdapter

#: The adapter class for each platform, as "module:Class", imported on first use.
ADAPTERS = {
    "onnx": "runtimes.onnx:OnnxRuntimeAdapter",
    "torchscript": "runtimes.torchscript:TorchScriptAdapter",
    "torch_export": "runtimes.torch_export:TorchExportAdapter",
    "savedmodel": "runtimes.savedmodel:SavedModelAdapter",
    "jax": "runtimes.jax:JaxAdapter",
}

log = logging.getLogger("tensorgate.worker")


class _LoadedModel:
    def __init__(self, adapter: RuntimeAdapter, instances: int) -> None:
        self.adapter = adapter
        self.pool = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=adapter.spec.key)


class Worker:
    """Dispatches the calls that arrive on one channel."""

    def __init__(self, channel: SocketChannel) -> None:
        self._channel = channel
        self._models: dict[str, _LoadedModel] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")

    def serve(self) -> None:
        while (message := self._channel.receive()) is not None:
            body = message.body
            if isinstance(body, Execute):
                loaded = self._models.get(body.key)
                if loaded is None:
                    self._reply(message.call_id, Failure("internal", f"model {body.key} is not loaded"))
                else:
                    loaded.pool.submit(self._execute, message.call_id, loaded.adapter, body)
            elif isinstance(body, LoadModel):
                self._loader.submit(self._load, message.call_id, body)
            elif isinstance(body, UnloadModel):
                self._loader.submit(self._unload, message.call_id, body)
            else:
                self._reply(message.call_id, Failure("internal", f"unknown call {type(body).__name__}"))

    def _load(self, call_id: int, spec: LoadModel) -> None:
        try:
            adapter = _adapter_class(spec.platform)(spec)
            signature = adapter.signature()
        except ModelLoadError as exc:
            self._reply(call_id, Failure("invalid", str(exc)))
            return
        except Exception as exc:
            self._reply(call_id, Failure("internal", f"{spec.path}: {type(exc).__name__}: {exc}"))
            return
        self._models[spec.key] = _LoadedModel(adapter, spec.instances)
        self._reply(call_id, signature)

    def _unload(self, call_id: int, body: UnloadModel) -> None:
        loaded = self._models.pop(body.key, None)
        if loaded is not None:
            loaded.pool.shutdown(wait=True)
            loaded.adapter.close()
        self._reply(call_id, None)

    def _execute(self, call_id: int, adapter: RuntimeAdapter, call: Execute) -> None:
        started = time.monotonic_ns()
        try:
            result: Any = ExecuteResult(adapter.execute(call.inputs, call.outputs), started, time.monotonic_ns())
        except InvalidInput as exc:
            result = Failure("invalid", str(exc))
        except Exception as exc:
            log_event(log, "execute_failed", level=logging.ERROR, model=call.key, error=f"{type(exc).__name__}: {exc}")
            result = Failure("internal", f"{type(exc).__name__}: {exc}")
        self._reply(call_id, result)

    def _reply(self, call_id: int, body: Any) -> None:
        with contextlib.suppress(OSError):  # the gateway is gone; the main loop sees end of stream
            self._channel.send(Envelope(call_id, body))


def _adapter_class(platform: str) -> type[RuntimeAdapter]:
    target = ADAPTERS.get(platform)
    if target is None:
        raise ModelLoadError(f"platform '{platform}' has no runtime adapter in this build")
    module_name, class_name = target.split(":")
    adapter: type[RuntimeAdapter] = getattr(importlib.import_module(module_name), class_name)
    return adapter


def main(argv: list[str]) -> int:
    framework, fd = argv[0], int(argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"ts=%(asctime)s level=%(levelname)s logger=%(name)s worker={framework} %(message)s")
    with socket.socket(fileno=fd) as sock:
        Worker(SocketChannel(sock)).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
