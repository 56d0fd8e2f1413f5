"""Exports run and match PyTorch, or fail leaving nothing behind."""

import pytest
import torch

from repnext import reparameterize
from repnext.cli import main
from repnext.export import ExportError, export_model, exported_program
from repnext.registry import create_model


@pytest.fixture(scope="module")
def small_net():
    """A conv-BN-ReLU-pool-linear net: enough to exercise staging and Core ML, quick to convert."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()  # fmt: skip


@pytest.fixture(scope="module")
def fused_recnext():
    torch.manual_seed(0)
    return reparameterize(create_model("recnext_m0", num_classes=10).eval())


def test_onnx_export_has_a_dynamic_batch_and_exports_recnext_interpolation(fused_recnext, tmp_path):
    report = export_model(fused_recnext, "onnx", tmp_path / "recnext_m0.onnx", resolution=32)
    assert report.max_abs_error is not None and report.max_abs_error < 1e-4  # verified on a batch of 2
    assert report.path.stat().st_size > 0 and [p.name for p in tmp_path.iterdir()] == ["recnext_m0.onnx"]


def test_openvino_export_writes_the_ir_and_its_weights(small_net, tmp_path, capsys):
    pytest.importorskip("openvino", reason="OpenVINO export needs openvino (the export extra)")
    report = export_model(small_net, "openvino", tmp_path / "m.xml", resolution=32)
    assert report.max_abs_error is not None and report.max_abs_error < 1e-4  # verified on a batch of 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    with pytest.raises(ExportError, match=r"m\.ir: an OpenVINO IR is named \.xml"):
        export_model(small_net, "openvino", tmp_path / "m.ir", resolution=32)


def test_exported_program_is_written_reloaded_and_takes_any_batch(fused_recnext, tmp_path, capsys):
    main(["export", "recnext_m0", "--format", "exported-program", "--resolution", "32", "--num-classes", "10",
          "-o", str(tmp_path / "m0.pt2")])  # fmt: skip
    assert "max abs error 0 on random batches of 1 and 3" in capsys.readouterr().out  # the same kernels run
    assert [p.name for p in tmp_path.iterdir()] == ["m0.pt2"]
    program = torch.export.load(str(tmp_path / "m0.pt2")).module()
    assert program(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    with pytest.raises(ExportError, match=r"m0\.pt: an exported program is named \.pt2"):
        export_model(fused_recnext, "exported-program", tmp_path / "m0.pt", resolution=32)
    with pytest.raises(ValueError, match=r"on an example of 2 or more images, got \[1, 3, 32, 32\]"):
        exported_program(fused_recnext, torch.randn(1, 3, 32, 32))  # torch.export would fix the batch at 1


def test_torchscript_export_via_cli_with_a_checkpoint(tmp_path, capsys):
    model = create_model("repnext_m0", num_classes=5)
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    main(["export", "repnext_m0", "--format", "torchscript", "--checkpoint", str(tmp_path / "ckpt.pth"),
          "--num-classes", "5", "--resolution", "32", "-o", str(tmp_path / "m0.pt")])  # fmt: skip
    assert "max abs error" in capsys.readouterr().out
    loaded = torch.jit.load(str(tmp_path / "m0.pt"))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reparameterize(model.eval())(x)
        assert torch.allclose(loaded(x), expected, atol=1e-4)


def test_export_over_tolerance_fails_and_leaves_nothing(small_net, tmp_path):
    with pytest.raises(ExportError, match=r"torchscript export differs from PyTorch by .* \(> tolerance -1\)"):
        export_model(small_net, "torchscript", tmp_path / "out" / "m.pt", resolution=32, tolerance=-1)
    assert list((tmp_path / "out").iterdir()) == []


def test_coreml_conversion_passes_the_spec_check(small_net, tmp_path):
    pytest.importorskip("coremltools", reason="Core ML export needs coremltools (the export extra)")
    report = export_model(small_net, "coreml", tmp_path / "m.mlpackage", resolution=32)
    assert report.max_abs_error is None and "input (1, 3, 32, 32) -> logits [1, 10]" in report.checked
    assert (tmp_path / "m.mlpackage").is_dir()


def test_export_bad_input_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^repnext export: .*missing\.pth"):
        main(["export", "repnext_m0", "--format", "onnx", "--checkpoint", str(tmp_path / "missing.pth"),
              "-o", str(tmp_path / "m.onnx")])  # fmt: skip
    with pytest.raises(SystemExit, match="unknown model 'repnext_m9'"):
        main(["export", "repnext_m9", "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert list(tmp_path.iterdir()) == []
