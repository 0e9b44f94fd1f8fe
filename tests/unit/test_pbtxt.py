"""Triton's config.pbtxt (gateway/repository/pbtxt.py): what maps onto ModelConfig, with which
defaults, and every refusal naming the file and the field."""

import json
import zipfile
from pathlib import Path

import pytest

from gateway.lifecycle import scheduler_options
from gateway.repository.config import ConfigError, DynamicBatchingConfig, ModelConfig
from gateway.repository.layout import scan_repository
from gateway.repository.pbtxt import load_override, load_pbtxt
from gateway.scheduling.scheduler import DEFAULT_MAX_QUEUE_SIZE, ExecuteResult, Scheduler
from gateway.scheduling.stats import ModelStats

ONNX = 'platform: "onnxruntime_onnx"\n'

FULL = """
name: "m"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 8
default_model_filename: "net.onnx"
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, -1, -1 ]
  },
  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }
]
output [ { name: "OUTPUT0", data_type: TYPE_FP16, dims: [ 10 ] } ]
instance_group [ { name: "first" count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 1500
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 250000
    allow_timeout_override: true
    max_queue_size: 16
  }
}
version_policy: { specific: { versions: [ 1, 3 ] } }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters [ { key: "inter_op_threads", value: { string_value: "1" } } ]
model_transaction_policy { decoupled: false }
response_cache { enable: false }
"""


def _write(tmp_path: Path, text: str, model: str = "m", versions: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / model
    folder.mkdir(parents=True, exist_ok=True)
    for version in versions:
        (folder / version).mkdir(exist_ok=True)
    path = folder / "config.pbtxt"
    path.write_text(text)
    return path


def _load(tmp_path: Path, text: str) -> ModelConfig:
    return load_pbtxt(_write(tmp_path, text), "m")


def _error(tmp_path: Path, text: str, model: str = "m") -> str:
    path = _write(tmp_path, text, model)
    with pytest.raises(ConfigError) as info:
        load_pbtxt(path, model)
    message = str(info.value)
    assert message.startswith(str(path)), message
    return message


# --- what maps, and to what ----------------------------------------------------------------------------------


def test_every_supported_field(tmp_path: Path) -> None:
    config = _load(tmp_path, FULL)
    assert config.name == "m" and config.platform == "onnx" and config.framework == "onnxruntime"
    assert config.max_batch_size == 8
    assert config.default_model_filename == "net.onnx"
    assert config.inputs is not None and config.outputs is not None
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [("INPUT0", "FP32", [3, -1, -1]),
                                                                     ("TEXT", "BYTES", [1])]
    assert [(t.name, t.datatype, t.shape) for t in config.outputs] == [("OUTPUT0", "FP16", [10])]
    assert config.instances.count == 3 and config.instances.device == "cpu"
    assert config.version_policy.specific is not None and config.version_policy.specific.versions == [1, 3]
    assert config.dynamic_batching == DynamicBatchingConfig(
        max_queue_delay_ms=1.5, preferred_batch_sizes=[4, 8], max_queue_size=16, default_timeout_ms=250.0,
        priority_levels=3, default_priority=2)
    assert config.parameters == {"intra_op_threads": "2", "inter_op_threads": "1"}


def test_defaults_of_a_minimal_config(tmp_path: Path) -> None:
    config = _load(tmp_path, ONNX)
    assert config == ModelConfig(platform="onnx")
    assert config.max_batch_size == 0  # Triton's 0 means what ours means: no batch dimension
    assert config.inputs is None and config.outputs is None  # read from the model
    assert config.instances.count == 1 and config.instances.device == "cpu"
    assert config.version_policy.select([1, 2, 3]) == [3]  # latest 1, as in Triton
    assert config.dynamic_batching is None and config.default_model_filename is None


def test_an_empty_dynamic_batching_block_means_our_defaults_and_a_bounded_queue(tmp_path: Path) -> None:
    """Triton's max_queue_size 0 is an unbounded queue; ours is the default bound."""
    config = _load(tmp_path, ONNX + "max_batch_size: 4\ndynamic_batching { }\n")
    assert config.dynamic_batching == DynamicBatchingConfig()
    assert config.dynamic_batching.priority_levels == 1  # Triton's 0: priorities off
    assert config.dynamic_batching.default_timeout_ms == 0  # no timeout

    async def execute(*_: object) -> ExecuteResult:
        raise AssertionError("not called")

    scheduler = Scheduler(scheduler_options("m", config), execute, ModelStats("m", "1"))
    assert scheduler.max_queue_size == DEFAULT_MAX_QUEUE_SIZE


@pytest.mark.parametrize(("fields", "platform"), [
    ('platform: "onnxruntime_onnx"', "onnx"),
    ('backend: "onnxruntime"', "onnx"),
    ('platform: "pytorch_libtorch"', "torchscript"),
    ('backend: "pytorch"', "torchscript"),
    ('platform: "tensorflow_savedmodel"', "savedmodel"),
    ('backend: "tensorflow"', "savedmodel"),
    ('platform: "tensorflow_savedmodel" backend: "tensorflow"', "savedmodel"),
    ('platform: "torch_export"', "torch_export"),
    ('platform: "torch_export" backend: "pytorch"', "torch_export"),
    ('platform: "torch_aoti" backend: "pytorch"', "torch_aoti"),
    ('platform: "jax"', "jax"),
    ('platform: "tflite"', "tflite"),
    ('backend: "tflite"', "tflite"),
    ('backend: "armnn_tflite"', "tflite"),  # Triton's TFLite backend
])
def test_platform_and_backend(tmp_path: Path, fields: str, platform: str) -> None:
    assert _load(tmp_path, fields).platform == platform


@pytest.mark.parametrize(("file", "platform"), [("model.onnx", "onnx"), ("model.pt", "torchscript"),
                                                ("model.savedmodel", "savedmodel"), ("model.pt2", "torch_export"),
                                                ("model.tflite", "tflite")])
def test_without_platform_or_backend_the_model_file_decides(tmp_path: Path, file: str, platform: str) -> None:
    path = _write(tmp_path, "max_batch_size: 0\n", versions=("1",))
    (path.parent / "1" / file).touch()
    assert load_pbtxt(path, "m").platform == platform


def test_without_platform_a_pt2_file_is_an_aoti_package_or_a_torch_export_program(tmp_path: Path) -> None:
    """Both formats are zips named model.pt2; an AOTInductor package holds <archive>/data/aotinductor/."""
    path = _write(tmp_path, "max_batch_size: 0\n", versions=("1", "2"))
    for version, member in (("1", "model/data/aotinductor/model/abc.wrapper.so"), ("2", "model/models/model.json")):
        with zipfile.ZipFile(path.parent / version / "model.pt2", "w") as archive:
            archive.writestr(member, b"")
    with pytest.raises(ConfigError, match="do not tell"):  # one version of each: Triton's rule, one platform only
        load_pbtxt(path, "m")
    (path.parent / "2" / "model.pt2").unlink()
    assert load_pbtxt(path, "m").platform == "torch_aoti"
    (path.parent / "1" / "model.pt2").write_bytes(b"PK\x03\x04 truncated")  # unreadable: the runtime reports it
    assert load_pbtxt(path, "m").platform == "torch_export"


def test_without_platform_the_default_model_filename_decides(tmp_path: Path) -> None:
    path = _write(tmp_path, 'default_model_filename: "digits.onnx"\n', versions=("3",))
    (path.parent / "3" / "digits.onnx").touch()
    (path.parent / "3" / "model.pt").touch()  # not the model's file: ignored
    assert load_pbtxt(path, "m").platform == "onnx"


@pytest.mark.parametrize(("datatype", "ours"), [
    ("TYPE_BOOL", "BOOL"), ("TYPE_UINT8", "UINT8"), ("TYPE_UINT16", "UINT16"), ("TYPE_UINT32", "UINT32"),
    ("TYPE_UINT64", "UINT64"), ("TYPE_INT8", "INT8"), ("TYPE_INT16", "INT16"), ("TYPE_INT32", "INT32"),
    ("TYPE_INT64", "INT64"), ("TYPE_FP16", "FP16"), ("TYPE_FP32", "FP32"), ("TYPE_FP64", "FP64"),
    ("TYPE_BF16", "BF16"), ("TYPE_STRING", "BYTES"),
])
def test_datatypes(tmp_path: Path, datatype: str, ours: str) -> None:
    config = _load(tmp_path, ONNX + f'input [ {{ name: "x" data_type: {datatype} dims: [ 2 ] }} ]\n')
    assert config.inputs is not None and config.inputs[0].datatype == ours


@pytest.mark.parametrize(("groups", "count", "device"), [
    ("[ { count: 2 kind: KIND_GPU gpus: [ 1 ] } ]", 2, "cuda:1"),
    ("[ { kind: KIND_GPU } ]", 1, "cuda:0"),  # Triton: every visible GPU; ours: the first
    ("[ { count: 3 gpus: [ 0 ] } ]", 3, "cuda:0"),  # KIND_AUTO with gpus: those GPUs
    ("[ { count: 3 } ]", 3, "cpu"),  # KIND_AUTO without gpus: the CPU
    ("[ { count: 0 kind: KIND_CPU } ]", 1, "cpu"),  # count 0 is Triton's default, 1
    ("[ { count: 2 kind: KIND_GPU gpus: [ 0 ] }, { count: 1 kind: KIND_AUTO gpus: [ 0 ] } ]", 3, "cuda:0"),
    ("[ { count: 1 kind: KIND_CPU }, { count: 2 kind: KIND_AUTO } ]", 3, "cpu"),
])
def test_instance_groups(tmp_path: Path, groups: str, count: int, device: str) -> None:
    config = _load(tmp_path, ONNX + f"instance_group {groups}\n")
    assert (config.instances.count, config.instances.device) == (count, device)


@pytest.mark.parametrize(("policy", "served"), [
    ("{ latest: { num_versions: 2 } }", [2, 3]),
    ("{ all: { } }", [1, 2, 3]),
    ("{ specific: { versions: [ 1 ] } }", [1]),
])
def test_version_policy(tmp_path: Path, policy: str, served: list[int]) -> None:
    assert _load(tmp_path, ONNX + f"version_policy: {policy}\n").version_policy.select([1, 2, 3]) == served


def test_torch_tensors_follow_the_index_in_their_names(tmp_path: Path) -> None:
    """Triton's PyTorch convention: INPUT__1 is forward's second argument wherever it is listed."""
    tensors = """
input [ { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT__0" data_type: TYPE_INT64 dims: [ 4 ] } ]
output [ { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
    torch = _load(tmp_path, 'platform: "pytorch_libtorch"\n' + tensors)
    assert torch.inputs is not None and torch.outputs is not None
    assert [t.name for t in torch.inputs] == ["INPUT__0", "INPUT__1"]
    assert [t.name for t in torch.outputs] == ["OUTPUT__0", "OUTPUT__1"]
    onnx = _load(tmp_path, ONNX + tensors)  # names, not positions: left as written
    assert onnx.inputs is not None and [t.name for t in onnx.inputs] == ["INPUT__1", "INPUT__0"]


@pytest.mark.parametrize(("key", "ours"), [
    ("intra_op_threads", "intra_op_threads"), ("inter_op_threads", "inter_op_threads"),
    ("intra_op_thread_count", "intra_op_threads"), ("inter_op_thread_count", "inter_op_threads"),  # ONNX backend
    ("INTRA_OP_THREAD_COUNT", "intra_op_threads"), ("INTER_OP_THREAD_COUNT", "inter_op_threads"),  # PyTorch
    ("tflite_num_threads", "intra_op_threads"),  # Triton's TFLite backend
])
def test_thread_parameters_under_triton_backends_names(tmp_path: Path, key: str, ours: str) -> None:
    text = ONNX + f'parameters {{ key: "{key}" value {{ string_value: "3" }} }}\n'
    assert _load(tmp_path, text).parameters == {ours: "3"}


def test_raw_quantized_parameter(tmp_path: Path) -> None:
    text = 'backend: "armnn_tflite"\nparameters { key: "raw_quantized" value { string_value: "true" } }\n'
    assert _load(tmp_path, text).parameters == {"raw_quantized": "true"}


def test_pad_batches_to_parameter(tmp_path: Path) -> None:
    text = ONNX + 'parameters { key: "pad_batches_to" value { string_value: "1,4,8" } }\n'
    assert _load(tmp_path, text).parameters == {"pad_batches_to": "1,4,8"}


def test_linear_kernel_parameter(tmp_path: Path) -> None:
    text = 'platform: "pytorch_libtorch"\nparameters { key: "linear_kernel" value { string_value: "aten" } }\n'
    assert _load(tmp_path, text).parameters == {"linear_kernel": "aten"}


def test_signature_name_parameter(tmp_path: Path) -> None:
    text = 'backend: "tensorflow"\nparameters { key: "signature_name" value { string_value: "predict" } }\n'
    assert _load(tmp_path, text).parameters == {"signature_name": "predict"}


def test_comments_and_both_list_syntaxes(tmp_path: Path) -> None:
    text = ONNX + """# a comment
input { name: "a" data_type: TYPE_FP32 dims: 2 dims: 3 }  # one at a time
input [ { name: "b" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
"""
    config = _load(tmp_path, text)
    assert config.inputs is not None and [(t.name, t.shape) for t in config.inputs] == [("a", [2, 3]), ("b", [2, 3])]


# --- refusals: each names the file and the field ---------------------------------------------------------------

TENSOR = 'name: "x" data_type: TYPE_FP32 dims: [ 4 ]'

REFUSED = [
    # (config text, the field named, a fragment of the reason)
    (ONNX + f"input [ {{ {TENSOR} reshape: {{ shape: [ 2, 2 ] }} }} ]", "input['x'].reshape", "not supported"),
    (ONNX + f"output [ {{ {TENSOR} reshape {{ shape: [ 4, 1 ] }} }} ]", "output['x'].reshape", "not supported"),
    (ONNX + f"input [ {{ {TENSOR} optional: true }} ]", "input['x'].optional", "every input is required"),
    (ONNX + f"input [ {{ {TENSOR} allow_ragged_batch: true }} ]", "input['x'].allow_ragged_batch", "ragged"),
    (ONNX + f"input [ {{ {TENSOR} is_shape_tensor: true }} ]", "input['x'].is_shape_tensor", "shape tensors"),
    (ONNX + f"output [ {{ {TENSOR} is_non_linear_format_io: true }} ]", "output['x'].is_non_linear_format_io",
     "non-linear"),
    (ONNX + f"input [ {{ {TENSOR} format: FORMAT_NHWC }} ]", "input['x'].format", "FORMAT_NHWC needs 3 dims"),
    (ONNX + f'output [ {{ {TENSOR} label_filename: "labels.txt" }} ]', "output['x'].label_filename",
     "classification"),
    (ONNX + 'input [ { data_type: TYPE_FP32 dims: [ 1 ] } ]', "input[0].name", "is required"),
    (ONNX + 'input [ { name: "x" dims: [ 1 ] } ]', "input['x'].data_type", "is required"),
    (ONNX + 'input [ { name: "x" data_type: 99 dims: [ 1 ] } ]', "input['x'].data_type", "99 is not one of"),
    (ONNX + 'output [ { name: "y" data_type: TYPE_FP32 } ]', "output['y'].dims", "is required"),
    (ONNX + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 0 ] } ]', "input['x'].dims", "positive, or -1"),
    (ONNX + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ -2 ] } ]', "input['x'].dims", "positive, or -1"),
    (ONNX + f"input [ {{ {TENSOR} }}, {{ {TENSOR} }} ]", "input", "duplicate names ['x']"),
    (ONNX + "max_batch_size: -1", "max_batch_size", "negative"),
    (ONNX + "model_warmup [ { name: \"w\" batch_size: 1 } ]", "model_warmup[0].inputs", "lists no input"),
    (ONNX + 'model_warmup [ { batch_size: 0 inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 1 ] '
            'zero_data: true } } } ]', "model_warmup[0].batch_size", "at least 1"),
    (ONNX + 'model_warmup [ { batch_size: 1 inputs { key: "x" value { dims: [ 1 ] zero_data: true } } } ]',
     "model_warmup[0].inputs['x'].data_type", "is required"),
    (ONNX + 'model_warmup [ { batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: [ -1 ] '
            'zero_data: true } } } ]', "model_warmup[0].inputs['x'].dims", "every dimension positive"),
    (ONNX + 'model_warmup [ { batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 1 ] } } } ]',
     "model_warmup[0].inputs['x']", "zero_data, random_data or input_data_file"),
    (ONNX + "model_transaction_policy { decoupled: true }", "model_transaction_policy.decoupled", "decoupled"),
    (ONNX + "response_cache { enable: true }", "response_cache.enable", "response cache"),
    (ONNX + "max_batch_size: 4 dynamic_batching { preferred_batch_size: [ 8 ] }",
     "dynamic_batching.preferred_batch_size", "8 is not between 1 and max_batch_size (4)"),
    (ONNX + "dynamic_batching { preserve_ordering: true }", "dynamic_batching.preserve_ordering", "not supported"),
    (ONNX + "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 1 value { max_queue_size: 4 } } }",
     "dynamic_batching.priority_queue_policy", "use default_queue_policy"),
    (ONNX + "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
     "dynamic_batching.default_priority_level", "3 is not between 1 and priority_levels (2)"),
    (ONNX + "dynamic_batching { priority_levels: 2 }", "dynamic_batching.default_priority_level",
     "0 is not between 1"),
    (ONNX + "dynamic_batching { default_priority_level: 1 }", "dynamic_batching.default_priority_level",
     "priority_levels is 0"),
    (ONNX + "dynamic_batching { default_queue_policy { timeout_action: DELAY } }",
     "dynamic_batching.default_queue_policy.timeout_action", "DELAY is not supported"),
    (ONNX + "instance_group [ { kind: KIND_MODEL } ]", "instance_group[0].kind", "KIND_MODEL"),
    (ONNX + "instance_group [ { kind: 9 } ]", "instance_group[0].kind", "9 is not one of KIND_AUTO"),
    (ONNX + "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]", "instance_group[0].gpus", "KIND_CPU"),
    (ONNX + "instance_group [ { kind: KIND_GPU gpus: [ 0, 1 ] } ]", "instance_group[0].gpus", "one device"),
    (ONNX + "instance_group [ { count: -1 } ]", "instance_group[0].count", "negative"),
    (ONNX + "instance_group [ { kind: KIND_GPU profile: [ \"0\" ] } ]", "instance_group[0].profile",
     "not supported"),
    (ONNX + "instance_group [ { count: 1 }, { passive: true } ]", "instance_group[1].passive", "not supported"),
    (ONNX + "instance_group [ { host_policy: \"numa0\" } ]", "instance_group[0].host_policy", "not supported"),
    (ONNX + "instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU gpus: [ 1 ] } ]", "instance_group",
     "different devices (cpu, cuda:1)"),
    (ONNX + "instance_group [ { count: 40 }, { count: 40 } ]", "instance_group", "80 instances in all; at most 64"),
    (ONNX + "version_policy { latest { } }", "version_policy.latest.num_versions", "at least 1"),
    (ONNX + "version_policy { specific { } }", "version_policy.specific.versions", "lists no version"),
    (ONNX + "version_policy { specific { versions: [ -1 ] } }", "version_policy.specific.versions",
     "non-negative"),
    (ONNX + 'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "/env.tar.gz" } }',
     "parameters['EXECUTION_ENV_PATH']", "no runtime reads this parameter"),
    (ONNX + 'parameters { key: "intra_op_thread_count" value { string_value: "four" } }',
     "parameters['intra_op_thread_count']", "not a positive number of threads"),
    (ONNX + 'parameters { key: "intra_op_threads" value { string_value: "1" } } '
            'parameters { key: "intra_op_thread_count" value { string_value: "2" } }',
     "parameters['intra_op_threads']", "sets intra_op_threads a second time"),
    (ONNX + 'default_model_filename: "../other/model.onnx"', "default_model_filename", "not a path"),
    ('platform: "tensorrt_plan"', "platform", "'tensorrt_plan' is not supported"),
    ('backend: "python"', "backend", "'python' is not supported"),
    ('platform: "onnxruntime_onnx" backend: "pytorch"', "backend", "'pytorch' does not run platform"),
    ("max_batch_size: 1", "platform", "neither platform nor backend is set"),
    ('name: "other"\n' + ONNX, "name", "'other' does not match the folder 'm'"),
]


@pytest.mark.parametrize(("text", "field", "reason"), REFUSED, ids=[f"{i}-{r[1]}" for i, r in enumerate(REFUSED)])
def test_refusals_name_the_file_and_the_field(tmp_path: Path, text: str, field: str, reason: str) -> None:
    message = _error(tmp_path, text)
    assert f": {field}: " in message, message
    assert reason in message, message


@pytest.mark.parametrize(("text", "where", "field", "reason"), [
    (ONNX + "optimization { graph { level: 1 } }", "2:1", "optimization", "are not supported; remove the block"),
    (ONNX + "sequence_batching { }", "2:1", "sequence_batching", "sequence batching"),
    (ONNX + "ensemble_scheduling { }", "2:1", "ensemble_scheduling", "ensembles"),
    (ONNX + "instance_group [ {\n  count: 1\n  rate_limiter { priority: 1 } } ]", "4:3", "instance_group.rate_limiter",
     "rate limiter"),
    (ONNX + "max_batch_sise: 4", "2:1", "max_batch_sise", "misspelled, or not supported"),
    (ONNX + "input [ { name: \"x\" data_typ: TYPE_FP32 } ]", "2:21", "input.data_typ", "misspelled"),
    (ONNX + "dynamic_batching { max_queue_delay_ms: 5 }", "2:20", "dynamic_batching.max_queue_delay_ms",
     "misspelled"),
])
def test_fields_the_parser_does_not_know_are_named_with_their_line(tmp_path: Path, text: str, where: str,
                                                                   field: str, reason: str) -> None:
    message = _error(tmp_path, text)
    assert f"config.pbtxt:{where}: {field}: " in message, message
    assert reason in message, message


@pytest.mark.parametrize(("text", "fragment"), [
    (ONNX + "input [ { name: \"x\" data_type: TYPE_FLOAT } ]", 'has no value named TYPE_FLOAT'),
    (ONNX + "max_batch_size: 8 max_batch_size: 4", 'multiple "max_batch_size" fields'),
    (ONNX + "input [ { name: \"x\" ", "Expected"),
    (ONNX + "version_policy { latest { } all { } }", 'oneof "policy_choice"'),
])
def test_syntax_errors_carry_the_line_and_column(tmp_path: Path, text: str, fragment: str) -> None:
    message = _error(tmp_path, text)
    assert "config.pbtxt:2:" in message and fragment in message, message


def test_an_unreadable_file(tmp_path: Path) -> None:
    path = _write(tmp_path, ONNX)
    path.write_bytes(b"\xff\xfe not text")
    with pytest.raises(ConfigError, match=r"config\.pbtxt: cannot read"):
        load_pbtxt(path, "m")


# --- the repository scan ---------------------------------------------------------------------------------------


def test_scan_reads_config_pbtxt(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name: "simple"\n' + ONNX, "simple", ("1", "2"))
    (entry,) = scan_repository(tmp_path)
    assert entry.name == "simple" and entry.error is None and entry.versions == (2,)
    assert entry.config is not None and entry.config.platform == "onnx" and entry.config_path == path


def test_scan_reports_a_refused_pbtxt_as_the_model_error(tmp_path: Path) -> None:
    _write(tmp_path, ONNX + "sequence_batching { }", "stateful", ("1",))
    (entry,) = scan_repository(tmp_path)
    assert entry.config is None and entry.versions == ()
    assert entry.error is not None and "stateful/config.pbtxt:2:1: sequence_batching: " in entry.error


def test_scan_refuses_a_folder_with_both_configs(tmp_path: Path) -> None:
    path = _write(tmp_path, ONNX, "both", ("1",))
    (path.parent / "config.yaml").write_text("platform: onnx\n")
    (entry,) = scan_repository(tmp_path)
    assert entry.config is None
    assert entry.error == (f"{path.parent}: both config.yaml and config.pbtxt are present; keep one "
                           "(TensorGate does not choose between them or merge them)")


def test_scan_reports_a_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "bare" / "1").mkdir(parents=True)
    (tmp_path / "bare" / "1" / "model.onnx").touch()
    (tmp_path / "README.md").write_text("files at the root are not models")
    (entry,) = scan_repository(tmp_path)
    assert (entry.name, entry.config, entry.versions) == ("bare", None, ())
    assert entry.error is not None and entry.error.startswith(f"{tmp_path / 'bare'}: no config.yaml or config.pbtxt")


def test_scan_leaves_out_hidden_folders_and_lost_and_found(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "lost+found").mkdir()
    with caplog.at_level("INFO", logger="tensorgate.repository"):
        assert scan_repository(tmp_path) == []
    assert f"event=repository_folder_ignored folder={tmp_path / 'lost+found'} " in caplog.text


# --- model_warmup, and the repository API's JSON override ----------------------------------------------------


def test_model_warmup_maps_onto_warmup(tmp_path: Path) -> None:
    config = _load(tmp_path, ONNX + """max_batch_size: 8
model_warmup [
  {
    name: "sample"
    batch_size: 4
    count: 2
    inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 3 ] random_data: true } }
    inputs { key: "z" value { data_type: TYPE_INT64 dims: [ 1 ] zero_data: true } }
    inputs { key: "s" value { data_type: TYPE_STRING dims: [ 2 ] input_data_file: "s.bin" } }
  },
  { batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 3 ] zero_data: false } } }
]""")
    first, second = config.warmup
    assert (first.name, first.batch_size, first.count) == ("sample", 4, 2)
    assert {k: (v.source, v.datatype, v.shape) for k, v in first.inputs.items()} == {
        "x": ("random", "FP32", [3]), "z": ("zero", "INT64", [1]), "s": ("file", "BYTES", [2])}
    assert first.inputs["s"].file == "s.bin"
    assert second.count == 1 and second.inputs["x"].source == "zero"  # Triton: set means chosen, whatever value


def test_a_warmup_file_outside_the_warmup_folder_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, ONNX + 'model_warmup [ { batch_size: 1 inputs { key: "x" value { '
                                      'data_type: TYPE_FP32 dims: [ 1 ] input_data_file: "../../secret" } } } ]')
    assert "model_warmup.0.inputs.x.input_data_file" in message and "not a path" in message


def _override(tmp_path: Path, document: object) -> ModelConfig:
    folder = tmp_path / "m"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(b"")
    return load_override(document if isinstance(document, str) else json.dumps(document), folder, "m")


def test_a_json_override_is_read_like_config_pbtxt(tmp_path: Path) -> None:
    config = _override(tmp_path, {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 500},
                                  "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
                                  "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]})
    assert (config.platform, config.max_batch_size, config.instances.count) == ("onnx", 8, 2)  # platform: the file
    assert config.dynamic_batching is not None and config.dynamic_batching.max_queue_delay_ms == 0.5
    assert config.inputs is not None and config.inputs[0].shape == [4]


def test_what_get_config_answers_loads_back_unchanged(tmp_path: Path) -> None:
    """A client fetches /v2/models/m/config, edits it, and loads it: the round trip must hold."""
    from gateway.contract import Signature, TensorSpec
    from gateway.repository.layout import read_model
    from gateway.repository.repository import ModelVersion
    from gateway.repository.triton_config import triton_config

    path = _write(tmp_path, FULL.replace('default_model_filename: "net.onnx"\n', ""), versions=("1", "3"))
    path.parent.joinpath("1", "model.onnx").write_bytes(b"")
    entry = read_model(tmp_path, "m")
    assert entry is not None and entry.config is not None
    signature = Signature(tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in entry.config.inputs or []),
                          tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in entry.config.outputs or []))
    document = triton_config(ModelVersion("m", 1, entry, signature=signature))
    again = load_override(json.dumps(document), path.parent, "m")
    assert again.model_dump(exclude={"name", "inputs"}) == entry.config.model_dump(exclude={"name", "inputs"})


@pytest.mark.parametrize(("document", "fragment"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"optimization": {"priority": "PRIORITY_DEFAULT"}}, "optimization: optimization settings"),
    ({"input": [{"name": "x", "foo": 1}]}, "input.foo: TensorGate does not read this field"),
    ({"max_batch_size": "eight"}, "max_batch_size"),
    ({"name": "n"}, "name: 'n' is not the model's name 'm'"),
    ({"platform": "tensorrt_plan"}, "platform: 'tensorrt_plan' is not supported"),
    ({"max_batch_size": 4, "model_warmup": [{"batch_size": 9, "inputs": {
        "x": {"data_type": "TYPE_FP32", "dims": [1], "zero_data": True}}}]}, "over max_batch_size (4)"),
])
def test_a_bad_override_says_why(tmp_path: Path, document: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _override(tmp_path, document)
    message = str(info.value)
    assert message.startswith("Invalid config override for model 'm': ") and fragment in message, message
