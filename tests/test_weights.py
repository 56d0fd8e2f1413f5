"""The weights resolver: every spec, fused TorchScript files as upstream's publish.py writes them, one-line errors."""

import shutil

import pytest
import timm
import torch

from repnext.analysis.equivalence import randomize_batchnorm
from repnext.checkpoint import read_state_dict
from repnext.registry import create_model
from repnext.reparam import reparameterize
from repnext.weights import Weights, WeightsError, in_form, load_weights

TINY = dict(embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1))


@pytest.fixture(scope="module")
def trained():
    """A tiny RepNeXt-M0 with non-trivial BatchNorm statistics (so a wrong fusion would show)."""
    torch.manual_seed(0)
    return randomize_batchnorm(create_model("repnext_m0", num_classes=5, **TINY)).eval()


def _script(model, path):
    with pytest.warns(FutureWarning):  # torch deprecates TorchScript; upstream's releases still use it
        torch.jit.script(model).save(str(path))
    return path


def test_checkpoint_weights_name_their_classes(tmp_path):
    source = timm.create_model("repnext_m0", num_classes=3)
    names = ["cat", "dog", "fish"]
    torch.save({"model": source.state_dict(), "args": {"class_names": names}}, tmp_path / "ours.pth")
    model, weights = load_weights("repnext_m0", tmp_path / "ours.pth")
    assert model.num_classes == 3 and weights.trained and weights.class_names == tuple(names)
    assert weights.description == "weights from ours.pth" and weights.form == "train"
    assert torch.equal(model.state_dict()["head.head.linear.weight"], source.state_dict()["head.head.linear.weight"])
    torch.save(timm.create_model("repnext_m0").state_dict(), tmp_path / "imagenet.pth")
    _, imagenet = load_weights("repnext_m0", str(tmp_path / "imagenet.pth"))
    assert imagenet.class_names[281] == "tabby, tabby cat" and len(imagenet.class_names) == 1000


def test_untrained_weights_are_seeded_and_say_so():
    state = torch.get_rng_state()
    first, weights = load_weights("repnext_m0", None, model_kwargs=TINY)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    second, _ = load_weights("repnext_m0", "none", model_kwargs=TINY)
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert weights == Weights("untrained weights (random init, seed 0)", False, None)
    assert load_weights("repnext_m0", "none", num_classes=7, model_kwargs=TINY)[0].num_classes == 7


def test_unavailable_weights_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="weights 'pretrained': no released weights exist for repnext_u1_tiny"):
        load_weights("repnext_u1_tiny", "pretrained")
    with pytest.raises(WeightsError, match=r"weights 'nowhere\.pth': no such checkpoint file"):
        load_weights("repnext_m0", "nowhere.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"weights 'file:///.*/gone\.pth': download failed"):
        load_weights("repnext_m0", (tmp_path / "gone.pth").as_uri())
    create = timm.create_model
    requested = []

    def offline(name, pretrained=False, pretrained_cfg_overlay=None, **kwargs):
        if pretrained:
            requested.append(pretrained_cfg_overlay)
            raise OSError("[Errno -2] Name or service not known")
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match=r"released weights of repnext_m0 \(OSError: .*\); they need network"):
        load_weights("repnext_m0", "pretrained")
    with pytest.raises(WeightsError, match=r"^weights 'hf-hub:suous/recnext_m0.dist_300e_in1k': could not load"):
        load_weights("recnext_m0", "hf-hub:suous/recnext_m0.dist_300e_in1k")
    assert requested == [{}, {"hf_hub_id": "suous/recnext_m0.dist_300e_in1k"}]


def test_url_weights_are_downloaded_once(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.save({"model": trained.state_dict()}, tmp_path / "tiny.pth")
    model, weights = load_weights("repnext_m0", (tmp_path / "tiny.pth").as_uri(), model_kwargs=TINY)
    assert (tmp_path / "hub" / "checkpoints" / "tiny.pth").is_file() and weights.description == "weights from tiny.pth"
    pairs = zip(model.state_dict().values(), trained.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize("single_branch", [False, True])
def test_fused_torchscript_as_publish_writes_it_loads_and_agrees(trained, tmp_path, single_branch):
    fused = reparameterize(trained, single_branch=single_branch)
    path = _script(fused, tmp_path / "repnext_m0_without_distill_8e_fused.pt")
    model, weights = load_weights("repnext_m0", path, model_kwargs=TINY)
    assert weights.form == "fused" and model.num_classes == 5 and isinstance(model, torch.nn.Module)
    assert not isinstance(model, torch.jit.ScriptModule)  # mapped onto our fused structure, a Python module again
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), fused(x))
        assert torch.allclose(model(x), trained(x), atol=1e-5)


def test_every_command_turns_loaded_weights_into_the_form_it_asks_for(trained):
    """One rule for eval, export and bench: a training-form model gives either form; a fused file gives only fused."""
    train_weights, fused_weights = Weights("w", True, None, "train"), Weights("w", True, None, "fused")
    assert in_form(trained, train_weights, "train", "w.pth") is trained
    fused = in_form(trained, train_weights, "fused", "w.pth")
    assert fused is not trained and all(m.training is False for m in fused.modules())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fused(x), trained(x), atol=1e-5)
    assert in_form(fused, fused_weights, "fused", "f.pt") is fused
    with pytest.raises(WeightsError, match=r"^f\.pt: holds a fused model only; the training form is not in the file$"):
        in_form(fused, fused_weights, "train", "f.pt")
    with pytest.raises(ValueError, match="unknown form 'unfused'"):
        in_form(trained, train_weights, "unfused", "w.pth")


def test_torchscript_of_another_variant_names_it(trained, tmp_path):
    path = _script(reparameterize(trained), tmp_path / "repnext_m0_distill_300e_fused.pt")
    with pytest.raises(WeightsError, match=r"repnext_m0_distill_300e_fused\.pt: a fused TorchScript model of "
                       r"repnext_m0, not of repnext_m1 \(\d+ parameters; shape mismatch at 'stem"):  # fmt: skip
        load_weights("repnext_m1", path)
    anonymous = shutil.copy(path, tmp_path / "weights.pt")
    with pytest.raises(WeightsError, match=r"weights\.pt: a fused TorchScript model that does not fit recnext_m0"):
        load_weights("recnext_m0", anonymous)


def test_text_file_and_untrusted_pickle_are_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    for content in ("hello\nworld\n", '{"a": 1}\n'):
        text.write_text(content)
        with pytest.raises(ValueError) as caught:
            load_weights("repnext_m0", text)
        assert str(caught.value).startswith(f"{text}: not a PyTorch checkpoint (") and "\n" not in str(caught.value)

    torch.save({"model": {"w": torch.zeros(1)}, "extra": Weights("x", True, None)}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match=r"pickle\.pth: not a PyTorch checkpoint \(refused by weights_only=True: "
                       r"Unsupported global: GLOBAL repnext\.weights\.Weights") as caught:  # fmt: skip
        read_state_dict(tmp_path / "pickle.pth")
    assert "\n" not in str(caught.value)


class _UpstreamForm(torch.nn.Module):
    """Stands in for upstream's fused form: our fused model plus the token-mixer BatchNorm parameters it keeps."""

    def __init__(self, fused: torch.nn.Module, kept: int):
        super().__init__()
        self.model = fused
        self.kept = torch.nn.Parameter(torch.zeros(kept))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_torchscript_in_upstreams_fuse_form_runs_as_is(trained, tmp_path):
    from repnext.analysis.stats import standalone_batchnorm_parameters

    fused = reparameterize(trained)
    path = _script(_UpstreamForm(fused, standalone_batchnorm_parameters(trained)), tmp_path / "upstream.pt")
    model, weights = load_weights("repnext_m0", path, model_kwargs=TINY)
    assert weights.form == "torchscript" and isinstance(model, torch.jit.ScriptModule)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fused(x))
    wrong = _script(_UpstreamForm(fused, 1), tmp_path / "other.pt")  # neither our form nor upstream's count
    with pytest.raises(WeightsError, match=r"other\.pt: a fused TorchScript model that does not fit repnext_m0"):
        load_weights("repnext_m0", wrong, model_kwargs=TINY)
