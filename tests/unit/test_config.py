"""config.yaml validation (gateway/repository/config.py) and repository scanning (layout.py)."""

from pathlib import Path

import pytest

from gateway.repository.config import ConfigError, ModelConfig, VersionPolicy, load_config
from gateway.repository.layout import scan_repository

MINIMAL = "platform: onnx\n"

TENSORS = """\
inputs:
  - {name: x, datatype: FP32, shape: [3]}
outputs:
  - {name: y, datatype: FP32, shape: [1]}
"""


def _write(tmp_path: Path, text: str, model: str = "m") -> Path:
    folder = tmp_path / model
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str, model: str = "m") -> str:
    path = _write(tmp_path, text, model)
    with pytest.raises(ConfigError) as info:
        load_config(path, model)
    message = str(info.value)
    assert str(path) in message
    return message


# --- load_config: valid configs ------------------------------------------------------------------------------


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), "m")
    assert config.platform == "onnx"
    assert config.framework == "onnxruntime"
    assert config.max_batch_size == 0
    assert config.inputs is None and config.outputs is None
    assert config.instances.count == 1 and config.instances.device == "cpu"
    assert config.dynamic_batching is None
    assert config.parameters == {}
    assert config.name is None


def test_full_config(tmp_path: Path) -> None:
    text = MINIMAL + TENSORS + """\
name: m
max_batch_size: 8
instances: {count: 2, device: "cuda:0"}
version_policy: {latest: {num_versions: 2}}
dynamic_batching: {max_queue_delay_ms: 5, preferred_batch_sizes: [4, 8]}
parameters: {threads: 2, mode: fast}
"""
    config = load_config(_write(tmp_path, text), "m")
    assert config.max_batch_size == 8
    assert config.inputs is not None and config.inputs[0].name == "x" and config.inputs[0].shape == [3]
    assert config.outputs is not None and config.outputs[0].datatype == "FP32"
    assert config.instances.count == 2 and config.instances.device == "cuda:0"
    assert config.dynamic_batching is not None and config.dynamic_batching.preferred_batch_sizes == [4, 8]
    assert config.parameters == {"threads": 2, "mode": "fast"}


def test_default_model_filename(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, MINIMAL), "m").default_model_filename is None
    config = load_config(_write(tmp_path, MINIMAL + "default_model_filename: digits.onnx\n"), "m")
    assert config.default_model_filename == "digits.onnx"


@pytest.mark.parametrize("name", ["sub/model.onnx", "..", "''"])
def test_default_model_filename_is_a_name_not_a_path(tmp_path: Path, name: str) -> None:
    message = _error(tmp_path, MINIMAL + f"default_model_filename: {name}\n")
    assert "default_model_filename" in message and "not a path" in message


def test_variable_dimension_is_allowed(tmp_path: Path) -> None:
    text = "platform: onnx\ninputs:\n  - {name: x, datatype: BYTES, shape: [-1, 2]}\n"
    config = load_config(_write(tmp_path, text), "m")
    assert config.inputs is not None and config.inputs[0].shape == [-1, 2]


@pytest.mark.parametrize(
    ("alias", "platform", "framework"),
    [("onnxruntime_onnx", "onnx", "onnxruntime"), ("pytorch_libtorch", "torchscript", "torch"),
     ("tensorflow_savedmodel", "savedmodel", "tensorflow")],
)
def test_platform_aliases(tmp_path: Path, alias: str, platform: str, framework: str) -> None:
    config = load_config(_write(tmp_path, f"platform: {alias}\n"), "m")
    assert config.platform == platform
    assert config.framework == framework


# --- load_config: every error names the file and the field -------------------------------------------------------


def test_unknown_key(tmp_path: Path) -> None:
    assert "max_batch: " in _error(tmp_path, MINIMAL + "max_batch: 4\n")


def test_unknown_key_inside_a_tensor(tmp_path: Path) -> None:
    text = "platform: onnx\ninputs:\n  - {name: x, datatype: FP32, shape: [1], dims: [1]}\n"
    assert "inputs.0.dims" in _error(tmp_path, text)


def test_unknown_platform(tmp_path: Path) -> None:
    assert "platform:" in _error(tmp_path, "platform: tensorrt_plan\n")


def test_missing_platform(tmp_path: Path) -> None:
    assert "platform:" in _error(tmp_path, "max_batch_size: 1\n")


def test_bad_datatype(tmp_path: Path) -> None:
    text = "platform: onnx\ninputs:\n  - {name: x, datatype: FLOAT32, shape: [1]}\n"
    message = _error(tmp_path, text)
    assert "inputs.0.datatype" in message
    assert "FLOAT32" in message


def test_bad_device(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "instances: {device: gpu}\n")
    assert "instances.device" in message
    assert "cuda:N" in message


@pytest.mark.parametrize("shape", ["[0]", "[3, 0]", "[-2]"])
def test_bad_dimension(tmp_path: Path, shape: str) -> None:
    text = f"platform: onnx\noutputs:\n  - {{name: y, datatype: FP32, shape: {shape}}}\n"
    assert "outputs.0.shape" in _error(tmp_path, text)


def test_duplicate_input_names(tmp_path: Path) -> None:
    text = "platform: onnx\ninputs:\n  - {name: x, datatype: FP32, shape: [1]}\n" \
           "  - {name: x, datatype: INT32, shape: [1]}\n"
    message = _error(tmp_path, text)
    assert "inputs" in message
    assert "duplicate names ['x']" in message


def test_two_version_policies(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "version_policy: {latest: {num_versions: 1}, all: {}}\n")
    assert "version_policy" in message
    assert "latest, all" in message


def test_negative_max_batch_size(tmp_path: Path) -> None:
    assert "max_batch_size" in _error(tmp_path, MINIMAL + "max_batch_size: -1\n")


def test_instance_count_out_of_range(tmp_path: Path) -> None:
    assert "instances.count" in _error(tmp_path, MINIMAL + "instances: {count: 0}\n")


def test_name_not_matching_folder(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "name: other\n", model="m")
    assert "name: 'other' does not match the folder 'm'" in message


def test_yaml_syntax_error(tmp_path: Path) -> None:
    message = _error(tmp_path, "platform: onnx\ninputs: [\n")
    assert "cannot read YAML" in message
    assert "line 3" in message


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    assert "top level must be a mapping" in _error(tmp_path, "- platform: onnx\n")


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    message = _error(tmp_path, "platform: onnx\nmax_batch_size: -1\ninstances: {device: tpu}\n")
    assert "max_batch_size" in message
    assert "instances.device" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "m" / "config.yaml"
    with pytest.raises(ConfigError, match="cannot read YAML"):
        load_config(path, "m")


# --- VersionPolicy.select --------------------------------------------------------------------------------------


def test_default_policy_serves_the_latest_version() -> None:
    assert VersionPolicy().select([3, 1, 2]) == [3]


def test_latest_n() -> None:
    assert VersionPolicy.model_validate({"latest": {"num_versions": 2}}).select([1, 5, 3, 2]) == [3, 5]


def test_latest_n_larger_than_available() -> None:
    assert VersionPolicy.model_validate({"latest": {"num_versions": 5}}).select([2, 1]) == [1, 2]


def test_all_versions() -> None:
    assert VersionPolicy.model_validate({"all": {}}).select([3, 1, 2]) == [1, 2, 3]


def test_specific_versions() -> None:
    policy = VersionPolicy.model_validate({"specific": {"versions": [1, 3, 9]}})
    assert policy.select([4, 3, 2, 1]) == [1, 3]


def test_select_from_nothing_is_nothing() -> None:
    assert VersionPolicy().select([]) == []


def test_latest_zero_versions_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_versions"):
        VersionPolicy.model_validate({"latest": {"num_versions": 0}})


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), "m")
    with pytest.raises(ValueError, match="frozen"):
        config.max_batch_size = 4  # type: ignore[misc]  # the point: frozen at run time too
    assert isinstance(config, ModelConfig)


# --- scan_repository -------------------------------------------------------------------------------------------


def _model(root: Path, name: str, text: str, versions: list[str]) -> None:
    _write(root, text, name)
    for version in versions:
        (root / name / version).mkdir()


def test_scan_finds_models_sorted_by_name(tmp_path: Path) -> None:
    _model(tmp_path, "b", MINIMAL, ["1"])
    _model(tmp_path, "a", MINIMAL, ["1"])
    entries = scan_repository(tmp_path)
    assert [e.name for e in entries] == ["a", "b"]
    assert entries[0].path == tmp_path / "a"
    assert entries[0].config is not None and entries[0].error is None


def test_scan_reports_folders_without_config_and_ignores_files(tmp_path: Path) -> None:
    _model(tmp_path, "good", MINIMAL, ["1"])
    (tmp_path / "notes" / "1").mkdir(parents=True)
    (tmp_path / "stray.yaml").write_text(MINIMAL)
    good, notes = scan_repository(tmp_path)
    assert good.name == "good" and good.error is None
    assert notes.name == "notes" and notes.config is None
    assert notes.error is not None and "no config.yaml or config.pbtxt" in notes.error


def test_scan_ignores_hidden_folders(tmp_path: Path) -> None:
    _model(tmp_path, ".cache", MINIMAL, ["1"])
    assert scan_repository(tmp_path) == []


def test_scan_reports_a_broken_config_without_raising(tmp_path: Path) -> None:
    _model(tmp_path, "broken", "platform: nope\n", ["1"])
    _model(tmp_path, "good", MINIMAL, ["1"])
    broken, good = scan_repository(tmp_path)
    assert broken.config is None
    assert broken.versions == ()
    assert broken.error is not None
    assert str(tmp_path / "broken" / "config.yaml") in broken.error and "platform" in broken.error
    assert good.error is None


def test_scan_model_without_version_folders(tmp_path: Path) -> None:
    _model(tmp_path, "m", MINIMAL, [])
    (tmp_path / "m" / "1.onnx").write_text("")
    (tmp_path / "m" / "v2").mkdir()
    (entry,) = scan_repository(tmp_path)
    assert entry.config is not None
    assert entry.versions == ()
    assert entry.error is not None and "no version folder" in entry.error and "none" in entry.error


def test_scan_versions_sorted_numerically_with_default_policy(tmp_path: Path) -> None:
    _model(tmp_path, "m", MINIMAL, ["2", "10", "9"])
    (entry,) = scan_repository(tmp_path)
    assert entry.versions == (10,)


def test_scan_applies_the_version_policy(tmp_path: Path) -> None:
    _model(tmp_path, "all", MINIMAL + "version_policy: {all: {}}\n", ["2", "10", "9"])
    _model(tmp_path, "latest", MINIMAL + "version_policy: {latest: {num_versions: 2}}\n", ["2", "10", "9"])
    _model(tmp_path, "specific", MINIMAL + "version_policy: {specific: {versions: [2, 7]}}\n", ["2", "10", "9"])
    entries = {e.name: e.versions for e in scan_repository(tmp_path)}
    assert entries == {"all": (2, 9, 10), "latest": (9, 10), "specific": (2,)}


def test_scan_policy_matching_no_version_is_an_error(tmp_path: Path) -> None:
    _model(tmp_path, "m", MINIMAL + "version_policy: {specific: {versions: [5]}}\n", ["1", "2"])
    (entry,) = scan_repository(tmp_path)
    assert entry.versions == ()
    assert entry.error is not None and "[1, 2]" in entry.error


def test_scan_of_a_missing_repository_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        scan_repository(tmp_path / "nope")
