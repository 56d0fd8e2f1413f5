"""repnext eval: exact top-1 on a tiny ImageFolder, both forms agreeing, one-line errors that leave nothing behind."""

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from repnext.analysis.equivalence import randomize_batchnorm
from repnext.cli import main
from repnext.datasets import build_split
from repnext.evaluation import eval_data_config, evaluate_model
from repnext.registry import create_model
from repnext.reparam import reparameterize

TINY = dict(embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1))
CLASSES = ("blue", "green", "red")


def write_folder(root, per_class=3, size=32, splits=("val",)):
    """3 classes told apart by their dominant channel (random textures): ``root/SPLIT/<class>/<i>.png``."""
    rng = np.random.default_rng(0)
    for split in splits:
        for channel, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
                pixels[..., 2 - channel] += 150
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data folder, checkpoint of a tiny 3-class RepNeXt-M0 with non-trivial BatchNorms, the model)."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("repnext_m0", num_classes=3, **TINY)).eval()
    torch.save({"model": model.state_dict(), "class_names": list(CLASSES)}, root / "tiny.pth")
    return write_folder(root / "data"), root / "tiny.pth", model


def _expected(model, data):
    """Top-1 (%) computed image by image, outside the evaluation loop."""
    config = eval_data_config("repnext_m0", model, img_size=32)
    dataset = build_split(str(data), "val", create_transform(**config, is_training=False))
    with torch.no_grad():
        hits = [model(image[None]).argmax(1).item() == label for image, label in dataset]
    return 100.0 * sum(hits) / len(hits), len(hits)


def test_eval_gives_the_exact_top1_and_both_forms_agree(setup):
    data, checkpoint, model = setup
    top1, images = _expected(model, data)
    assert 0 < top1 < 100  # the random model is right on some images only, so a wrong label order would show
    table = evaluate_model("repnext_m0", str(data), weights=str(checkpoint), form="both", batch_size=4,
                           img_size=32, model_kwargs=TINY, threads=1)  # fmt: skip
    train, fused = table.rows
    assert (train["form"], fused["form"]) == ("train", "fused") and train["images"] == images == 9
    assert train["top1"] == fused["top1"] == top1 and train["top5"] == 100.0
    assert fused["top1_agreement"] == 100.0 and fused["max_abs_logit_diff"] < 1e-4
    assert train["loss"] == pytest.approx(fused["loss"], abs=1e-5)


def test_fused_torchscript_evaluates_like_the_training_form(setup, tmp_path, capsys):
    data, checkpoint, model = setup
    with pytest.warns(FutureWarning):
        torch.jit.script(reparameterize(model)).save(str(tmp_path / "repnext_m0_without_distill_1e_fused.pt"))
    args = ["eval", "repnext_m0", "--data", str(data), "--img-size", "32", "--model-kwargs",
            "embed_dim=(8,16,32,64)", "depth=(1,1,1,1)", "--threads", "1", "--format", "csv"]  # fmt: skip
    main([*args, "--weights", str(tmp_path / "repnext_m0_without_distill_1e_fused.pt")])
    main([*args, "--weights", str(checkpoint)])
    header, scripted, _, trained = capsys.readouterr().out.splitlines()
    assert header.startswith("model,weights,form,split,images,top1,top5,loss")
    assert scripted.split(",")[2] == "fused" and trained.split(",")[2] == "train"
    assert scripted.split(",")[4:7] == trained.split(",")[4:7]  # images, top-1, top-5
    with pytest.raises(SystemExit, match=r"^repnext eval: .*_fused\.pt: holds a fused model only; the training form"):
        main([*args, "--weights", str(tmp_path / "repnext_m0_without_distill_1e_fused.pt"), "--both"])


def test_bad_input_is_one_line(setup, tmp_path):
    data, checkpoint, _ = setup
    base = ["eval", "repnext_m0", "--model-kwargs", "embed_dim=(8,16,32,64)", "depth=(1,1,1,1)", "--img-size", "32"]
    cases = [
        (["--data", str(data), "--split", "test", "--weights", str(checkpoint)], r"data/test: missing split folder"),
        (["--data", "builtin:photos", "--weights", str(checkpoint)],
         r"--data: builtin:photos val has 8 classes but the model's classifier has 3 \(weights from tiny\.pth\)"),
        (["--data", str(tmp_path / "nowhere"), "--weights", str(checkpoint)], r"nowhere: no such directory"),
        (["--data", str(data), "--weights", str(tmp_path / "notes.txt")], r"notes\.txt: not a PyTorch checkpoint"),
    ]  # fmt: skip
    (tmp_path / "notes.txt").write_text("not weights\n")
    for extra, message in cases:
        with pytest.raises(SystemExit, match=f"^repnext eval: .*{message}") as caught:
            main([*base, *extra])
        assert "\n" not in str(caught.value)
    renamed = tmp_path / "renamed"
    write_folder(renamed, per_class=1)
    (renamed / "val" / "red").rename(renamed / "val" / "yellow")
    with pytest.raises(SystemExit, match=r"class 2 of .* is 'yellow', but the weights call it 'red'"):
        main([*base, "--data", str(renamed), "--weights", str(checkpoint)])
    other = create_model("repnext_m1", num_classes=3)
    with pytest.warns(FutureWarning):
        torch.jit.script(reparameterize(other.eval())).save(str(tmp_path / "repnext_m1_distill_300e_fused.pt"))
    with pytest.raises(SystemExit, match=r"a fused TorchScript model of repnext_m1, not of repnext_m0"):
        main([*base, "--data", str(data), "--weights", str(tmp_path / "repnext_m1_distill_300e_fused.pt")])
    with pytest.raises(SystemExit, match=r"^repnext eval: -o: .*table\.txt: unknown table format 'txt'"):
        main([*base, "--data", str(data), "--weights", str(checkpoint), "-o", str(tmp_path / "out" / "table.txt")])
    assert not (tmp_path / "out").exists()
