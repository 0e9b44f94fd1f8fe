"""Torch linear layers moved onto oneDNN: same results, every linear found once, fallbacks kept."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.contract import LoadModel
from runtimes.base import ModelLoadError
from runtimes.onednn_linear import onednn_layers, onednn_linear, use_onednn_linear
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


def _pair() -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    torch.manual_seed(0)
    net = _Branchy().eval()
    return torch.jit.script(net), torch.jit.script(net)


def test_every_linear_is_rewritten_once_with_the_same_results() -> None:
    rewritten, reference = _pair()
    assert onednn_layers(rewritten) == 0
    # The Linear class's forward (shared by a and b), the bias-free Linear's, the branch's and the loop's.
    assert use_onednn_linear(rewritten) == 4
    assert onednn_layers(rewritten) == 4
    assert use_onednn_linear(rewritten) == 0  # a second call leaves the fallback branches alone
    assert onednn_layers(rewritten) == 4
    for shape in [(4, 8), (8,), (2, 3, 8)]:
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
    assert "event=linear_layers_on_onednn model=mlp layers=2" in caplog.text
    aten = _adapter(version, linear_kernel="aten")
    assert onednn_layers(default._module) == 2
    assert onednn_layers(aten._module) == 0
    x = {"INPUT__0": np.random.default_rng(0).standard_normal((5, 64), dtype=np.float32)}
    ours, theirs = default.execute(x, ["OUTPUT__0"]), aten.execute(x, ["OUTPUT__0"])
    np.testing.assert_allclose(ours["OUTPUT__0"], theirs["OUTPUT__0"], rtol=1e-5, atol=1e-6)


def test_an_unknown_linear_kernel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"parameters.linear_kernel is 'mkl'; use one of onednn, aten"):
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
    assert "event=linear_layers_on_onednn model=mlp layers=2" in caplog.text
    aten = _export_adapter(version, linear_kernel="aten")
    assert _fx_targets(default).count(onednn_linear) == 2
    assert _fx_targets(aten).count(torch.ops.aten.linear.default) == 2 and onednn_linear not in _fx_targets(aten)
    x = {"input": np.random.default_rng(1).standard_normal((3, 64), dtype=np.float32)}
    np.testing.assert_allclose(default.execute(x, ["output"])["output"], aten.execute(x, ["output"])["output"],
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
