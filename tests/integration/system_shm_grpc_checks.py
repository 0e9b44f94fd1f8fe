"""System shared memory through ``tritonclient.grpc``, run in its own process.

tritonclient.grpc and TensorGate's generated modules both register ``inference.*`` in
protobuf's default pool, so this script must never import ``gateway``. Usage:
``python system_shm_grpc_checks.py HOST:PORT`` prints one JSON object mapping each check to
"ok" or the failure, and exits 0. Every check removes the segments and registrations it made.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import serialize_byte_tensor, serialized_byte_size

from tests.integration.tritonclient_grpc_checks import expect_error  # run_client_script puts the checkout first

Region = tuple[str, str, shm.SharedMemoryRegion]
CHECKS: dict[str, Callable[[grpcclient.InferenceServerClient], None]] = {}


def check(fn: Callable[[grpcclient.InferenceServerClient], None]) -> Callable[[grpcclient.InferenceServerClient], None]:
    CHECKS[fn.__name__] = fn
    return fn


@contextmanager
def regions(client: grpcclient.InferenceServerClient, *sizes: int) -> Iterator[list[Region]]:
    """Create and register one region per size; unregister and destroy them afterwards."""
    made: list[Region] = []
    try:
        for i, size in enumerate(sizes):
            name, key = f"grpc_{os.getpid()}_{i}", f"/tg_grpc_{os.getpid()}_{i}"
            handle = shm.create_shared_memory_region(name, key, size)
            made.append((name, key, handle))
            client.register_system_shared_memory(name, key, size)
        yield made
    finally:
        for name, key, handle in made:
            client.unregister_system_shared_memory(name)
            shm.destroy_shared_memory_region(handle)
            assert not os.path.exists(f"/dev/shm{key}"), key


def versioned_input(name: str, byte_size: int = 16, offset: int = 0) -> grpcclient.InferInput:
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_shared_memory(name, byte_size, offset)
    return x


@check
def round_trip_in_and_out(client: grpcclient.InferenceServerClient) -> None:
    with regions(client, 16, 32) as [(inp, _, in_handle), (out, _, out_handle)]:
        shm.set_shared_memory_region(in_handle, [np.array([[1, 2, 3, 4]], np.float32)])
        y = grpcclient.InferRequestedOutput("y")
        y.set_shared_memory(out, 16, offset=16)
        result = client.infer("versioned", [versioned_input(inp)], outputs=[y])
        got = shm.get_contents_as_numpy(out_handle, np.float32, [1, 4], offset=16)
        assert got.tolist() == [[3, 4, 5, 6]], got
        response = result.get_response()
        assert list(response.raw_output_contents) == [b""], "a shared-memory output has an empty raw entry"
        tensor = response.outputs[0]
        assert tensor.name == "y" and tensor.datatype == "FP32" and list(tensor.shape) == [1, 4]
        assert tensor.parameters["shared_memory_region"].string_param == out
        assert tensor.parameters["shared_memory_offset"].int64_param == 16


@check
def mixed_raw_and_shared_memory_inputs(client: grpcclient.InferenceServerClient) -> None:
    """Only inputs outside shared memory have raw_input_contents entries, as Triton's client sends."""
    rng = np.random.default_rng(11)
    arrays: dict[str, tuple[str, np.ndarray]] = {
        "fp32": ("FP32", rng.standard_normal((2, 3)).astype(np.float32)),
        "int64": ("INT64", rng.integers(-(2**40), 2**40, (2, 2), dtype=np.int64)),
        "bytes": ("BYTES", np.array([[b"shm", b""], [b"x" * 70, "ü".encode()]], dtype=object)),
        "bool": ("BOOL", np.array([[True, False]] * 2)),
        "fp16": ("FP16", rng.standard_normal((2, 4)).astype(np.float16)),
    }
    in_shm = {"int64", "bytes"}
    serialized = serialize_byte_tensor(arrays["bytes"][1])
    sizes = {"int64": arrays["int64"][1].nbytes, "bytes": serialized_byte_size(serialized)}
    with regions(client, 256, 256) as [(inp, _, in_handle), (out, _, out_handle)]:
        shm.set_shared_memory_region(in_handle, [arrays["int64"][1]])
        shm.set_shared_memory_region(in_handle, [serialized], offset=64)
        inputs = []
        for suffix, (datatype, array) in arrays.items():
            tensor = grpcclient.InferInput(f"in_{suffix}", list(array.shape), datatype)
            if suffix in in_shm:
                tensor.set_shared_memory(inp, sizes[suffix], 0 if suffix == "int64" else 64)
            else:
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        out_bytes = grpcclient.InferRequestedOutput("out_bytes")
        out_bytes.set_shared_memory(out, 256)
        outputs = [grpcclient.InferRequestedOutput(f"out_{s}") for s in ("fp32", "int64", "bool", "fp16")]
        result = client.infer("identity", inputs, outputs=[*outputs, out_bytes])
        for suffix in ("fp32", "int64", "bool", "fp16"):
            np.testing.assert_array_equal(result.as_numpy(f"out_{suffix}"), arrays[suffix][1])
        got = shm.get_contents_as_numpy(out_handle, np.object_, [2, 2])
        assert got.tolist() == arrays["bytes"][1].tolist(), got


@check
def status_and_unregister(client: grpcclient.InferenceServerClient) -> None:
    with regions(client, 64) as [(name, key, _)]:
        status = client.get_system_shared_memory_status(as_json=True)
        assert status["regions"][name] == {"name": name, "key": key, "byte_size": "64"}, status
        one = client.get_system_shared_memory_status(region_name=name)
        assert one.regions[name].key == key and one.regions[name].offset == 0
        client.unregister_system_shared_memory(name)
        assert name not in client.get_system_shared_memory_status().regions
        expect_error(lambda: client.get_system_shared_memory_status(region_name=name),
                     "StatusCode.INVALID_ARGUMENT", f"unknown shared memory region '{name}'")


@check
def bad_registrations(client: grpcclient.InferenceServerClient) -> None:
    with regions(client, 64) as [(name, key, _)]:
        expect_error(lambda: client.register_system_shared_memory("other", "/tg_grpc_missing", 8),
                     "StatusCode.INVALID_ARGUMENT", "no shared memory segment with key '/tg_grpc_missing'")
        expect_error(lambda: client.register_system_shared_memory("other", key, 64, offset=8),
                     "StatusCode.INVALID_ARGUMENT", "offset 8 + byte_size 64 runs past the end of segment")
        expect_error(lambda: client.register_system_shared_memory(name, key, 8),
                     "StatusCode.ALREADY_EXISTS", f"region '{name}' is already registered")
        assert "other" not in client.get_system_shared_memory_status().regions


@check
def bad_references(client: grpcclient.InferenceServerClient) -> None:
    with regions(client, 16, 8) as [(inp, _, in_handle), (small, _, _)]:
        shm.set_shared_memory_region(in_handle, [np.zeros((1, 4), np.float32)])
        expect_error(lambda: client.infer("versioned", [versioned_input("nowhere")]),
                     "StatusCode.INVALID_ARGUMENT", "input 'x': unknown shared memory region 'nowhere'")
        expect_error(lambda: client.infer("versioned", [versioned_input(inp, 16, 8)]),
                     "StatusCode.INVALID_ARGUMENT", f"runs past the end of region '{inp}' (16 bytes)")
        y = grpcclient.InferRequestedOutput("y")
        y.set_shared_memory(small, 8)
        expect_error(lambda: client.infer("versioned", [versioned_input(inp)], outputs=[y]),
                     "StatusCode.INVALID_ARGUMENT", "output 'y' needs 16 bytes but its shared_memory_byte_size is 8")


@check
def cuda_shared_memory_is_refused(client: grpcclient.InferenceServerClient) -> None:
    expect_error(lambda: client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64),
                 "StatusCode.UNIMPLEMENTED", "CUDA shared memory is not supported on this server")
    expect_error(lambda: client.get_cuda_shared_memory_status(),
                 "StatusCode.UNIMPLEMENTED", "CUDA shared memory is not supported")


def main(address: str) -> int:
    outcome: dict[str, str] = {}
    for name, fn in CHECKS.items():
        client = grpcclient.InferenceServerClient(url=address)
        try:
            fn(client)
            outcome[name] = "ok"
        except Exception:
            outcome[name] = traceback.format_exc()
        finally:
            client.close()
    leaked = shm.mapped_shared_memory_regions()
    outcome["no_segment_left_mapped"] = "ok" if not leaked else f"still mapped: {leaked}"
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
