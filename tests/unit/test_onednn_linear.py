"""Torch linear layers moved onto oneDNN: same results, every linear found once, fallbacks kept."""

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.contract import LoadModel
from runtimes.base import ModelLoadError
from runtimes.onednn_linear import onednn_layers, onednn_linear, onednn_linear_packed, use_onednn_linear
from runtimes.torch_export import TorchExportAdapter
from runtimes.torchscript import TorchScriptAdapter

# The anchors' models are traced: so is this one's.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.trace_method` is deprecated:DeprecationWarning")]


class _Branchy(torch.nn.Module):
    """Two Linear submodules of one class (they share a graph), a bias-free one, linears in a branch and a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)
        self.c = torch.nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor, flag: bool = True) -> torch.Tensor:
        y: torch.Tensor = self.b(torch.relu(self.a(x)))
        if flag:
            y = torch.nn.functional.linear(y, self.c.weight)
        else:
            for _ in range(2):
                y = torch.nn.functional.linear(y, self.b.weight, self.b.bias)
        return y


def _loaded(module: torch.nn.Module, copies: int = 2) -> list[torch.jit.ScriptModule]:
    """Scripted, saved and loaded ``copies`` times, as the server loads models: each load is its own
    compilation unit, so rewriting one copy's class graphs leaves the other's alone."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    loaded = []
    for _ in range(copies):
        buffer.seek(0)
        loaded.append(torch.jit.load(buffer))  # type: ignore[no-untyped-call]
    return loaded


def _pair() -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    torch.manual_seed(0)
    rewritten, reference = _loaded(_Branchy().eval())
    return rewritten, reference


def test_every_linear_is_rewritten_once_with_the_same_results() -> None:
    rewritten, reference = _pair()
    assert onednn_layers(rewritten) == (0, 0)
    # The Linear class's forward (shared by a and b), the bias-free Linear's, the branch's and the
    # loop's; all four read a weight attribute, so all four get the packed copy.
    assert use_onednn_linear(rewritten) == (4, 4)
    assert onednn_layers(rewritten) == (4, 4)
    assert use_onednn_linear(rewritten) == (0, 0)  # a second call leaves the fallback branches alone
    assert onednn_layers(rewritten) == (4, 4)
    for name in ("a", "b", "c"):
        assert getattr(rewritten, name)._tensorgate_onednn_weight.is_mkldnn
    for shape in [(4, 8), (8,), (1, 8), (2, 3, 8)]:  # one row reads the plain weight, more the packed
        x = torch.randn(*shape)
        for flag in (True, False):
            with torch.inference_mode():
                torch.testing.assert_close(rewritten(x, flag), reference(x, flag))


def test_inputs_onednn_refuses_take_aten_linear() -> None:
    rewritten, reference = _pair()
    use_onednn_linear(rewritten)
    with torch.inference_mode():
        empty = rewritten(torch.randn(0, 8), True)
        assert empty.shape == reference(torch.randn(0, 8), True).shape == (0, 3)
        with pytest.raises(RuntimeError, match="same dtype") as ours:
            rewritten(torch.randn(4, 8, dtype=torch.float64), True)
        with pytest.raises(RuntimeError, match="same dtype") as theirs:
            reference(torch.randn(4, 8, dtype=torch.float64), True)
    assert str(ours.value).splitlines()[-1] == str(theirs.value).splitlines()[-1]


def _mlp(path: Path) -> Path:
    """A traced MLP as the anchors build theirs (seeded weights), saved as model.pt."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    version = path / "1"
    version.mkdir()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 64)), str(version / "model.pt"))  # type: ignore[no-untyped-call]
    return version


def _adapter(version: Path, **parameters: str) -> TorchScriptAdapter:
    return TorchScriptAdapter(LoadModel(
        key="mlp:1", model_name="mlp", path=str(version), platform="torchscript", max_batch_size=8, device="cpu",
        instances=1, parameters={"intra_op_threads": 1, **parameters},
        inputs=[("INPUT__0", "FP32")], outputs=[("OUTPUT__0", "FP32")]))


def test_the_adapter_uses_onednn_by_default_and_aten_when_asked(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    version = _mlp(tmp_path)
    with caplog.at_level(logging.INFO, logger="tensorgate.torch"):
        default = _adapter(version)
    assert "event=linear_layers_on_onednn model=mlp layers=2 packed=2" in caplog.text
    aten = _adapter(version, linear_kernel="aten")
    unpacked = _adapter(version, linear_kernel="onednn_unpacked")
    assert onednn_layers(default._module) == (2, 2)
    assert onednn_layers(unpacked._module) == (2, 0)  # oneDNN, without the copies' memory
    assert onednn_layers(aten._module) == (0, 0)
    for rows in (1, 5):
        x = {"INPUT__0": np.random.default_rng(rows).standard_normal((rows, 64), dtype=np.float32)}
        theirs = aten.execute(x, ["OUTPUT__0"])["OUTPUT__0"]
        for ours in (default, unpacked):
            np.testing.assert_allclose(ours.execute(x, ["OUTPUT__0"])["OUTPUT__0"], theirs, rtol=1e-5, atol=1e-6)


def test_an_unknown_linear_kernel_is_refused(tmp_path: Path) -> None:
    choices = "onednn, onednn_unpacked, aten"
    with pytest.raises(ModelLoadError, match=rf"parameters.linear_kernel is 'mkl'; use one of {choices}"):
        _adapter(_mlp(tmp_path), linear_kernel="mkl")


def _exported_mlp(path: Path) -> Path:
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(net, (torch.zeros(2, 64),), dynamic_shapes=({0: batch},))
    version = path / "1"
    version.mkdir()
    torch.export.save(program, str(version / "model.pt2"))
    return version


def _export_adapter(version: Path, **parameters: str) -> TorchExportAdapter:
    return TorchExportAdapter(LoadModel(
        key="mlp:1", model_name="mlp", path=str(version), platform="torch_export", max_batch_size=8, device="cpu",
        instances=1, parameters={"intra_op_threads": 1, **parameters}, outputs=[("output", "FP32")]))


def _fx_targets(adapter: TorchExportAdapter) -> list[object]:
    return [n.target for n in adapter._module.graph.nodes if n.op == "call_function"]


def test_torch_export_programs_move_their_linear_calls_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = _exported_mlp(tmp_path)
    with caplog.at_level(logging.INFO, logger="tensorgate.torch"):
        default = _export_adapter(version)
    assert "event=linear_layers_on_onednn model=mlp layers=2 packed=2" in caplog.text
    aten = _export_adapter(version, linear_kernel="aten")
    assert _fx_targets(default).count(onednn_linear_packed) == 2
    unpacked = _export_adapter(version, linear_kernel="onednn_unpacked")
    assert _fx_targets(unpacked).count(onednn_linear) == 2 and onednn_linear_packed not in _fx_targets(unpacked)
    assert _fx_targets(aten).count(torch.ops.aten.linear.default) == 2
    assert not {onednn_linear, onednn_linear_packed} & set(_fx_targets(aten))
    for rows in (1, 3):
        x = {"input": np.random.default_rng(rows).standard_normal((rows, 64), dtype=np.float32)}
        for ours in (default, unpacked):
            np.testing.assert_allclose(ours.execute(x, ["output"])["output"], aten.execute(x, ["output"])["output"],
                                       rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelLoadError, match=r"parameters\.linear_kernel is 'fast'"):
        _export_adapter(version, linear_kernel="fast")


def test_the_fx_call_falls_back_where_onednn_cannot_run() -> None:
    weight, bias = torch.randn(4, 3), torch.randn(4)
    assert onednn_linear(torch.randn(0, 3), weight, bias).shape == (0, 4)
    doubles = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(onednn_linear(doubles, weight.double(), bias.double()),
                               torch.nn.functional.linear(doubles, weight.double(), bias.double()))
    x = torch.randn(5, 3)
    torch.testing.assert_close(onednn_linear(x, weight), torch.nn.functional.linear(x, weight))


def test_the_packed_call_falls_back_like_the_plain_one() -> None:
    weight, bias = torch.randn(4, 3), torch.randn(4)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight)
    for rows in (1, 5):
        x = torch.randn(rows, 3)
        torch.testing.assert_close(onednn_linear_packed(x, weight, packed, bias),
                                   torch.nn.functional.linear(x, weight, bias))
    assert onednn_linear_packed(torch.randn(0, 3), weight, packed, bias).shape == (0, 4)
    doubles = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="same dtype"):
        onednn_linear_packed(doubles, weight, packed, bias)


class _SelfChanging(torch.nn.Module):
    """Weights that methods change: one assigned, one scaled in place. Neither may be packed."""

    assigned: torch.Tensor
    scaled: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("assigned", torch.randn(4, 8))
        self.register_buffer("scaled", torch.randn(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.assigned) + torch.nn.functional.linear(x, self.scaled)

    @torch.jit.export
    def replace(self, weight: torch.Tensor) -> None:
        self.assigned = weight

    @torch.jit.export
    def scale(self) -> None:
        self.scaled.mul_(2.0)


def test_weights_a_method_changes_are_not_packed() -> None:
    torch.manual_seed(3)
    net, reference = _loaded(_SelfChanging().eval())
    assert use_onednn_linear(net) == (2, 0)
    x = torch.randn(3, 8)
    weight = torch.randn(4, 8)
    for model in (net, reference):
        model.replace(weight)
        model.scale()
    with torch.inference_mode():
        torch.testing.assert_close(net(x), reference(x))


class _Mixed(torch.nn.Module):
    """Two Linear instances of one class (one graph), one FP32 and one FP64."""

    def __init__(self) -> None:
        super().__init__()
        self.fp32 = torch.nn.Linear(8, 8)
        self.fp64 = torch.nn.Linear(8, 8).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fp32(x) + self.fp64(x.double()).float()
        return y


def test_an_instance_whose_weight_cannot_be_packed_keeps_aten() -> None:
    torch.manual_seed(4)
    net, reference = _loaded(_Mixed().eval())
    assert use_onednn_linear(net) == (1, 1)  # one graph, shared by both instances
    assert net.fp32._tensorgate_onednn_weight.is_mkldnn
    assert not net.fp64._tensorgate_onednn_weight.is_mkldnn  # its FP64 weight is what aten::linear reads
    for rows in (1, 4):
        x = torch.randn(rows, 8)
        with torch.inference_mode():
            torch.testing.assert_close(net(x), reference(x))


class _EmptyLayer(torch.nn.Module):
    """A layer with no output features: oneDNN cannot pack its weight (no primitive for the reorder)."""

    empty: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(8, 4)
        self.register_buffer("empty", torch.zeros(0, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.first(x)
        return hidden, torch.nn.functional.linear(hidden, self.empty)


def test_a_weight_onednn_cannot_pack_keeps_its_plain_layout() -> None:
    torch.manual_seed(5)
    net, reference = _loaded(_EmptyLayer().eval())
    assert use_onednn_linear(net) == (2, 1)  # the empty weight's call stays on the plain weight, uncounted
    assert net.first._tensorgate_onednn_weight.is_mkldnn
    assert not hasattr(net, "_tensorgate_onednn_empty")  # no copy made, and the load did not fail
    assert onednn_layers(net) == (2, 1)
    x = torch.randn(3, 8)
    with torch.inference_mode():
        ours, theirs = net(x), reference(x)
    torch.testing.assert_close(ours, theirs)
    assert ours[1].shape == (3, 0)
