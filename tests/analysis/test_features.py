"""Feature maps: hooks see the block's true input, branches rebuild each family's mixer, any image loads."""

import filecmp
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from repnext.analysis import features
from repnext.analysis.equivalence import randomize_batchnorm
from repnext.analysis.features import (
    ImageError,
    capture_branches,
    compute_feature_maps,
    load_image,
    panel_figure,
    write_feature_maps,
)
from repnext.distributed import runtime

ROOT = Path(__file__).parents[2]
NOTEBOOK = ROOT / "notebooks" / "feature_maps.ipynb"
REPOSITORY_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]

# (model, stage, block, expected branches); blocks after the first see earlier blocks' outputs
FAMILIES = [
    ("repnext_m0", 1, 1, ["identity", "conv_s", "conv_m", "conv_l"]),
    ("recnext_m0", 0, 1, ["level0", "level1", "level2", "level3", "level4"]),
    ("recnext_a0", 1, 1, ["level0", "level1"]),
    ("repnext_u1_tiny", 0, 1, ["dwconv1", "dwconv2", "dwconv3"]),
    ("recnext_t", 1, 1, ["mixed", "untouched"]),
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Batch-1 tensors of 64x64 and smaller: a second thread only adds waiting, badly so on a busy machine."""
    with runtime(1):
        yield


def _block_input_by_hand(model, image, stage, block):
    """The block's input from the model's own modules, run one after another (no hooks)."""
    if hasattr(model, "stem"):  # MetaNeXt: stem, then stages that start with their downsampling
        x = model.stem(image)
        for previous in model.stages[:stage]:
            x = previous(x)
        stage_input, blocks = model.stages[stage].downsample(x), model.stages[stage].blocks
    else:  # RepNeXt-u: downsampling layers beside the stages
        x = image
        for down, previous in zip(model.downsample_layers[:stage], model.stages[:stage], strict=True):
            x = previous(down(x))
        stage_input, blocks = model.downsample_layers[stage](x), model.stages[stage]
    x = stage_input
    for previous in blocks[:block]:
        x = previous(x)
    return x, stage_input


@pytest.mark.parametrize(("name", "stage", "block", "branches"), FAMILIES)
def test_hooks_capture_the_true_block_input_and_branches_rebuild_the_mixer(name, stage, block, branches):
    model = randomize_batchnorm(timm.create_model(name)).eval()  # non-trivial BatchNorms, so slices must be right
    image = torch.randn(1, 3, 64, 64)
    seen = []
    handle = features.find_block(model, stage, block)[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(image)
    handle.remove()
    capture = capture_branches(model, image, stage, block)
    block_module, mixer = features.find_block(model, stage, block)
    with torch.no_grad():  # RecNeXt T/S/B blocks run their RepVGG-style mixer before the token mixer
        mixer_input = block_module.rep_mixer(seen[0]) if hasattr(block_module, "rep_mixer") else seen[0]
        assert torch.equal(capture.block_input, seen[0]) and torch.equal(capture.mixer_input, mixer_input)
        assert torch.equal(capture.mixer_output, mixer(mixer_input))
        assert torch.equal(capture.logits, model(image))
    assert list(capture.branches) == branches == list(capture.labels)
    height, width = seen[0].shape[-2:]
    assert all(t.dim() == 4 and t.shape[0] == 1 and t.shape[-2:] == (height, width) for t in capture.branches.values())
    scale = capture.mixer_output.abs().max().item()
    assert capture.branch_error <= 1e-5 * scale and capture.fused_error <= 1e-4 * scale
    alone = features.mixer_branches(mixer, capture.mixer_input)
    assert all(torch.equal(alone[n], capture.branches[n]) for n in branches)
    assert features.channel_mean(capture.branches[branches[-1]]).shape == (height, width)
    pixels = image[0].permute(1, 2, 0).clamp(0, 1).numpy()
    maps = features.FeatureMaps(name, features.Weights("test", False, None), "noise", pixels, capture, [])
    assert [ax.get_title().split(" (")[0] for ax in panel_figure(maps).axes[1:-1]] == branches
    with torch.no_grad():
        by_hand, stage_input = _block_input_by_hand(model, image, stage, block)
    assert torch.equal(capture.block_input, by_hand)
    # upstream's demo fed the branches the stage's input: not what block 1 receives
    assert not torch.allclose(capture.block_input, stage_input)


def test_recconv_levels_widen_the_reach():
    """Level l's share of the output depends on pixels far beyond a 5x5 conv, and more so as l grows."""
    model = timm.create_model("recnext_m0").eval()
    image = torch.zeros(1, 3, 64, 64)
    capture = capture_branches(model, image, 0, 0)
    probe = capture.mixer_input.clone()
    probe[..., 0, 0] += 1.0  # one corner pixel changes
    changed = features.mixer_branches(features.find_block(model, 0, 0)[1], probe)
    reach = [(changed[n] - capture.branches[n]).abs().amax(dim=1)[0].nonzero()[:, 0].max().item() for n in changed]
    assert reach[0] == 2 and reach == sorted(reach) and reach[-1] > 8


def _palette_image(palette: list[int], index: int) -> Image.Image:
    image = Image.new("P", (8, 6), index)
    image.putpalette(palette)
    return image


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize(
    ("make", "suffix", "pixel"),
    [
        (lambda: Image.new("RGB", (8, 6), (10, 20, 30)), "png", (10, 20, 30)),
        (lambda: Image.new("L", (8, 6), 100), "png", (100, 100, 100)),
        (lambda: Image.new("1", (8, 6), 1), "png", (255, 255, 255)),
        (lambda: Image.new("RGBA", (8, 6), (0, 0, 0, 0)), "png", (255, 255, 255)),  # transparent: over white
        (lambda: Image.new("LA", (8, 6), (0, 255)), "png", (0, 0, 0)),
        (lambda: Image.fromarray(np.full((6, 8), 65535, np.uint16)), "png", (255, 255, 255)),  # I;16
        (lambda: Image.fromarray(np.full((6, 8), 32896, np.uint16)), "tiff", (128, 128, 128)),
        (lambda: Image.fromarray(np.linspace(-1, 3, 48, dtype=np.float32).reshape(6, 8)), "tiff", (0, 0, 0)),  # F
        (lambda: _palette_image([0, 0, 0, 200, 10, 10], index=1), "png", (200, 10, 10)),
        (lambda: Image.new("CMYK", (8, 6), (0, 0, 0, 0)), "jpeg", (255, 255, 255)),
    ],
)
def test_every_image_mode_loads_as_rgb(make, suffix, pixel, tmp_path):
    source = make()
    image = load_image(_save(source, tmp_path / f"image.{suffix}"))
    assert image.mode == "RGB" and image.size == (8, 6)
    assert image.getpixel((0, 0)) == pytest.approx(pixel, abs=2), source.mode


def test_transparent_palette_and_16_bit_range():
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert list(features.to_rgb(palette).get_flattened_data()) == [(255, 255, 255), (255, 0, 0)]
    ramp = Image.fromarray(np.array([[0, 257 * 7, 65535]], np.uint16))
    assert [p[0] for p in features.to_rgb(ramp).get_flattened_data()] == [0, 7, 255]


def test_bad_images_fail_with_one_error_naming_them(tmp_path):
    with pytest.raises(ImageError, match=r"image '.*missing\.png': no such file"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(ImageError, match=r"notes\.png': not a readable image \(UnidentifiedImageError"):
        load_image(text)
    good = _save(Image.new("RGB", (64, 64), (1, 2, 3)), tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageError, match=r"truncated\.png': not a readable image"):
        load_image(tmp_path / "truncated.png")
    with pytest.raises(ImageError, match=r"scikit-image bundles no such image; available: .*chelsea"):
        load_image("skimage:no_such_cat")


def test_urls_download_or_fail_clearly(tmp_path):
    path = _save(Image.new("L", (5, 4), 7), tmp_path / "remote.png")
    assert load_image(path.as_uri()).getpixel((0, 0)) == (7, 7, 7)
    with pytest.raises(ImageError, match=r"image 'file:///.*/gone\.png': download failed"):
        load_image((tmp_path / "gone.png").as_uri())
    assert features.image_name("https://example.org/a/my.cat.jpg?x=1") == "my_cat"
    assert features.image_name("skimage:chelsea") == "chelsea"
    assert load_image(features.DEFAULT_IMAGE).size == (451, 300)


def test_bad_settings_name_the_parameter():
    with pytest.raises(ValueError, match=r"^stage: expected a non-negative integer \(RepNeXt has 4 stages: 0 to 3\)"):
        compute_feature_maps("repnext_m0", stage=4, input_size=32)
    with pytest.raises(ValueError, match=r"^block: .*\(stage 3 of RepNeXt has 1 blocks: 0 to 0\), got 1"):
        compute_feature_maps("repnext_m0", stage=3, block=1, input_size=32)
    with pytest.raises(ValueError, match=r"^input_size: expected a positive integer, got 0"):
        compute_feature_maps("repnext_m0", input_size=0)
    with pytest.raises(ValueError, match=r"^model: unknown model 'repnext_m9'"):
        compute_feature_maps("repnext_m9")


def test_figures_are_written_once_per_branch_and_reproducibly(tmp_path):
    maps = compute_feature_maps("repnext_m0", None, features.DEFAULT_IMAGE, 0, 1, input_size=32)
    assert maps.pixels.shape == (32, 32, 3) and maps.predictions == []
    runs = [write_feature_maps(maps, tmp_path / run, ["conv_l"], channel_grid=2) for run in "ab"]
    stem = "repnext_m0/chelsea-stage0-block1"
    names = [str(p.relative_to(tmp_path / "a")) for p in runs[0]]
    assert names == [f"{stem}{end}" for end in ("-conv_l.png", "-fused.png", ".png", ".pdf", "-conv_l-channels.png")]
    assert filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)[0] == names
    assert "untrained weights" in panel_figure(maps)._suptitle.get_text()
    with pytest.raises(ValueError, match="branches: ChunkConv has no branch 'conv_x'; available: identity, conv_s"):
        write_feature_maps(maps, tmp_path / "c", ["conv_x"])
    with pytest.raises(ValueError, match="channel_grid: expected False or a number of channels, got True"):
        write_feature_maps(maps, tmp_path / "c", channel_grid=True)
    assert not (tmp_path / "c").exists()


def _cell(nb, cell_id):
    return next(cell for cell in nb.cells if cell.id == cell_id)


def test_notebook_is_clean_and_colab_ready(monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata.kernelspec == {"display_name": "Python 3", "language": "python", "name": "python3"}
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert [c.id for c in tagged] == ["parameters"]
    declared = {}
    exec(tagged[0].source, {}, declared)
    assert declared == dict(
        model="repnext_m0", weights=None, image=features.DEFAULT_IMAGE, stage=0, block=1, branches=None,
        input_size=224, channel_grid=False, output_dir="figures/feature_maps",
    )  # fmt: skip
    colab = REPOSITORY_URL.replace("https://github.com/", "https://colab.research.google.com/github/")
    assert f"({colab}/blob/main/notebooks/feature_maps.ipynb)" in nb.cells[0].source
    install = _cell(nb, "colab")
    assert nb.cells.index(install) == next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    calls = []
    shell = types.SimpleNamespace(run_line_magic=lambda *args: calls.append(args))
    exec(install.source, {"get_ipython": lambda: shell})
    assert calls == []  # outside Colab: nothing happens
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(install.source, {"get_ipython": lambda: shell})
    assert calls == [("pip", f"install -q git+{REPOSITORY_URL}")]  # with its dependencies: Colab's torch satisfies them
    monkeypatch.setenv("REPNEXT_PIP_SOURCE", "dist/repnext-0.1.0-py3-none-any.whl")
    exec(install.source, {"get_ipython": lambda: shell})
    assert calls[-1] == ("pip", "install -q dist/repnext-0.1.0-py3-none-any.whl")
