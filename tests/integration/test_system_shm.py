"""Triton's system shared-memory extension against the real server, with Triton's own clients.

``tritonclient.utils.shared_memory`` makes the segments and ``tritonclient.http`` drives
REST here; the ``tritonclient.grpc`` checks run in their own process
(system_shm_grpc_checks.py: its protobuf registrations clash with ours). Every test
unregisters its regions and destroys its segments, and checks /dev/shm holds none of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests.helpers import run_client_script
from tests.server import ServerProcess

Region = tuple[str, str, shm.SharedMemoryRegion]
MakeRegion = Callable[[int], Region]
SCRIPT = Path(__file__).with_name("system_shm_grpc_checks.py")
GRPC_CHECKS = ["round_trip_in_and_out", "mixed_raw_and_shared_memory_inputs", "status_and_unregister",
               "bad_registrations", "bad_references", "cuda_shared_memory_is_refused", "no_segment_left_mapped"]


@pytest.fixture(scope="module")
def triton(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


@pytest.fixture
def segment(triton: httpclient.InferenceServerClient, request: pytest.FixtureRequest) -> Iterator[MakeRegion]:
    """Create a segment of the given size and register all of it; undone when the test ends."""
    made: list[Region] = []

    def make(size: int) -> Region:
        index = len(made)
        name, key = f"{request.node.name[:40]}_{index}", f"/tg_it_{os.getpid()}_{index}"
        handle = shm.create_shared_memory_region(name, key, size)
        made.append((name, key, handle))
        triton.register_system_shared_memory(name, key, size)
        return name, key, handle

    yield make
    for name, _, handle in made:
        triton.unregister_system_shared_memory(name)
        shm.destroy_shared_memory_region(handle)
    assert not any(os.path.exists(f"/dev/shm{key}") for _, key, _ in made)
    assert shm.mapped_shared_memory_regions() == []


def expect_400(fn: Callable[[], object], text: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        fn()
    assert info.value.status() == "400", info.value
    assert text in (info.value.message() or ""), info.value.message()


def shm_input(region: str, byte_size: int = 16, offset: int = 0) -> httpclient.InferInput:
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_shared_memory(region, byte_size, offset)
    return x


def test_extension_is_announced(triton: httpclient.InferenceServerClient) -> None:
    assert "system_shared_memory" in triton.get_server_metadata()["extensions"]


def test_round_trip_in_and_out(triton: httpclient.InferenceServerClient, segment: MakeRegion) -> None:
    inp, _, in_handle = segment(16)
    out, _, out_handle = segment(32)
    shm.set_shared_memory_region(in_handle, [np.array([[1, 2, 3, 4]], np.float32)])
    y = httpclient.InferRequestedOutput("y", binary_data=True)
    y.set_shared_memory(out, 16, offset=16)
    result = triton.infer("versioned", [shm_input(inp)], outputs=[y])
    assert shm.get_contents_as_numpy(out_handle, np.float32, [1, 4], offset=16).tolist() == [[3, 4, 5, 6]]
    entry = result.get_output("y")
    assert entry == {"name": "y", "datatype": "FP32", "shape": [1, 4],
                     "parameters": {"shared_memory_region": out, "shared_memory_byte_size": 16,
                                    "shared_memory_offset": 16}}


def test_every_datatype_through_shared_memory(triton: httpclient.InferenceServerClient,
                                              segment: MakeRegion) -> None:
    rng = np.random.default_rng(7)
    arrays: dict[str, tuple[str, np.ndarray]] = {
        "fp32": ("FP32", rng.standard_normal((2, 3)).astype(np.float32)),
        "int64": ("INT64", rng.integers(-(2**62), 2**62, (2, 2), dtype=np.int64)),
        "bytes": ("BYTES", np.array([[b"alpha", "ünïcode".encode()], [b"", b"z" * 300]], dtype=object)),
        "bool": ("BOOL", np.array([[True, False, True]] * 2)),
        "fp16": ("FP16", rng.standard_normal((2, 4)).astype(np.float16)),
    }
    inp, _, in_handle = segment(1024)
    out, _, out_handle = segment(1024)
    inputs, outputs, places = [], [], {}
    offset = 0
    for suffix, (datatype, array) in arrays.items():
        data = serialize_byte_tensor(array) if datatype == "BYTES" else array
        size = serialized_byte_size(data) if datatype == "BYTES" else array.nbytes
        shm.set_shared_memory_region(in_handle, [data], offset=offset)
        tensor = httpclient.InferInput(f"in_{suffix}", list(array.shape), datatype)
        tensor.set_shared_memory(inp, size, offset)
        inputs.append(tensor)
        requested = httpclient.InferRequestedOutput(f"out_{suffix}")
        requested.set_shared_memory(out, size, offset)
        outputs.append(requested)
        places[suffix] = offset
        offset += size + 8  # a gap, so a tensor overrunning its place would show
    triton.infer("identity", inputs, outputs=outputs)
    for suffix, (_, array) in arrays.items():
        dtype = np.object_ if array.dtype == object else array.dtype
        got = shm.get_contents_as_numpy(out_handle, dtype, list(array.shape), offset=places[suffix])
        assert got.tolist() == array.tolist(), suffix


def test_region_at_an_offset_of_its_segment(triton: httpclient.InferenceServerClient,
                                            segment: MakeRegion) -> None:
    name, key, handle = segment(8192)
    triton.register_system_shared_memory(f"{name}_tail", key, 32, offset=5000)
    try:
        shm.set_shared_memory_region(handle, [np.array([[0, 1, 2, 3]], np.float32)], offset=5000)
        y = httpclient.InferRequestedOutput("y")
        y.set_shared_memory(f"{name}_tail", 16, offset=16)
        triton.infer("versioned", [shm_input(f"{name}_tail")], outputs=[y], model_version="1")
        assert shm.get_contents_as_numpy(handle, np.float32, [4], offset=5016).tolist() == [1, 2, 3, 4]
        status = triton.get_system_shared_memory_status(f"{name}_tail")
        assert status == [{"name": f"{name}_tail", "key": key, "offset": 5000, "byte_size": 32}]
    finally:
        triton.unregister_system_shared_memory(f"{name}_tail")


def test_status_and_unregister(triton: httpclient.InferenceServerClient, segment: MakeRegion) -> None:
    first, key, _ = segment(64)
    second, _, _ = segment(32)
    names = [r["name"] for r in triton.get_system_shared_memory_status()]
    assert first in names and second in names
    assert triton.get_system_shared_memory_status(first) == [{"name": first, "key": key, "offset": 0,
                                                              "byte_size": 64}]
    triton.unregister_system_shared_memory(first)
    expect_400(lambda: triton.get_system_shared_memory_status(first), f"unknown shared memory region '{first}'")
    triton.unregister_system_shared_memory()  # every region
    assert triton.get_system_shared_memory_status() == []


def test_bad_registrations(triton: httpclient.InferenceServerClient, segment: MakeRegion) -> None:
    name, key, _ = segment(64)
    expect_400(lambda: triton.register_system_shared_memory("other", "/tg_it_missing", 8),
               "no shared memory segment with key '/tg_it_missing'")
    expect_400(lambda: triton.register_system_shared_memory("other", key, 65),
               "offset 0 + byte_size 65 runs past the end of segment")
    expect_400(lambda: triton.register_system_shared_memory("other", key, 8, offset=60),
               "offset 60 + byte_size 8 runs past the end of segment")
    expect_400(lambda: triton.register_system_shared_memory("other", "../etc/passwd", 8), "is not a shared memory key")
    expect_400(lambda: triton.register_system_shared_memory(name, key, 8), f"region '{name}' is already registered")
    assert "other" not in [r["name"] for r in triton.get_system_shared_memory_status()]


def test_bad_references(triton: httpclient.InferenceServerClient, segment: MakeRegion) -> None:
    inp, _, handle = segment(16)
    small, _, _ = segment(8)
    shm.set_shared_memory_region(handle, [np.zeros((1, 4), np.float32)])
    expect_400(lambda: triton.infer("versioned", [shm_input("nowhere")]),
               "input 'x': unknown shared memory region 'nowhere'")
    expect_400(lambda: triton.infer("versioned", [shm_input(inp, 16, 8)]),
               f"shared_memory_offset 8 + shared_memory_byte_size 16 runs past the end of region '{inp}'")
    expect_400(lambda: triton.infer("versioned", [shm_input(inp, 12)]),
               "input 'x': shared_memory_byte_size 12 does not match shape [1, 4]")
    y = httpclient.InferRequestedOutput("y")
    y.set_shared_memory("nowhere", 16)
    expect_400(lambda: triton.infer("versioned", [shm_input(inp)], outputs=[y]),
               "output 'y': unknown shared memory region 'nowhere'")
    y.set_shared_memory(small, 8)
    expect_400(lambda: triton.infer("versioned", [shm_input(inp)], outputs=[y]),
               "output 'y' needs 16 bytes but its shared_memory_byte_size is 8")


def test_the_json_shape_on_the_wire(server: ServerProcess, segment: MakeRegion) -> None:
    """Raw JSON, no client library: input by reference, output written and answered without data."""
    name, _, handle = segment(64)
    shm.set_shared_memory_region(handle, [np.array([[1, 1, 1, 1]], np.float32)])
    params = {"shared_memory_region": name, "shared_memory_byte_size": 16}
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": params}],
            "outputs": [{"name": "y", "parameters": {**params, "shared_memory_offset": 32}}]}
    reply = httpx.post(f"{server.http_url}/v2/models/versioned/infer", json=body)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert reply.json()["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 4],
                                        "parameters": {**params, "shared_memory_offset": 32}}]
    assert shm.get_contents_as_numpy(handle, np.float32, [4], offset=32).tolist() == [3, 3, 3, 3]
    both = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": params, "data": [1, 2, 3, 4]}]}
    reply = httpx.post(f"{server.http_url}/v2/models/versioned/infer", json=both)
    assert reply.status_code == 400 and "has both shared_memory_region and 'data'" in reply.json()["error"]
    reply = httpx.post(f"{server.http_url}/v2/systemsharedmemory/region/r/register", content=b"[1]")
    assert reply.status_code == 400 and "must be a JSON object" in reply.json()["error"]


def test_registered_over_rest_visible_over_grpc(server: ServerProcess, segment: MakeRegion) -> None:
    name, key, _ = segment(64)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name=name))
        assert status.regions[name].key == key and status.regions[name].byte_size == 64


def test_cuda_shared_memory_is_refused(triton: httpclient.InferenceServerClient, server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as info:
        triton.register_cuda_shared_memory("gpu", "AAAA", 0, 64)
    assert info.value.status() == "501" and "CUDA shared memory is not supported" in (info.value.message() or "")
    for path in ("/v2/cudasharedmemory/status", "/v2/cudasharedmemory/region/gpu/status"):
        reply = httpx.get(f"{server.http_url}{path}")
        assert reply.status_code == 501 and "not supported on this server" in reply.json()["error"]


def test_openapi_documents_the_routes(server: ServerProcess) -> None:
    paths = httpx.get(f"{server.http_url}/openapi.json").json()["paths"]
    for path in ("/v2/systemsharedmemory/status", "/v2/systemsharedmemory/region/{name}/register",
                 "/v2/systemsharedmemory/region/{name}/unregister", "/v2/systemsharedmemory/unregister"):
        assert path in paths, path


@pytest.fixture(scope="module")
def grpc_outcome(server: ServerProcess) -> dict[str, str]:
    result: dict[str, str] = run_client_script(SCRIPT, server.grpc_address, timeout=120)
    assert sorted(result) == sorted(GRPC_CHECKS), "the script's checks and this list must match"
    return result


@pytest.mark.parametrize("name", GRPC_CHECKS)
def test_tritonclient_grpc(grpc_outcome: dict[str, str], name: str) -> None:
    assert grpc_outcome[name] == "ok", grpc_outcome[name]
