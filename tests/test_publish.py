"""repnext publish: upstream's names and formats, a hub folder timm reloads exactly, a card of computed numbers."""

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
import timm
import torch

import repnext
from repnext.analysis.equivalence import randomize_batchnorm
from repnext.analysis.stats import count_macs, count_parameters, standalone_batchnorm_parameters
from repnext.cli import main
from repnext.publish import publish, release_name
from repnext.registry import create_model
from repnext.reparam import reparameterize
from repnext.weights import load_weights

TINY = dict(embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1))
CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training checkpoint as `repnext train` writes it, with its log.txt beside it, and the model."""
    root = tmp_path_factory.mktemp("run")
    model = randomize_batchnorm(create_model("repnext_m0", num_classes=3, **TINY)).eval()
    args = {"model": "repnext_m0", "data": "builtin:tiny", "epochs": 3, "img_size": 32, "crop_pct": 0.875,
            "model_kwargs": TINY, "out": str(root)}  # fmt: skip
    torch.save({"model": model.state_dict(), "optimizer": {}, "lr_scheduler": {}, "epoch": 2, "args": args,
                "max_accuracy": 50.0, "class_names": CLASSES}, root / "best.pth")  # fmt: skip
    common = {"train_lr": 1e-3, "train_loss": 1.0, "test_loss": 1.0, "test_acc5": 100.0, "n_parameters": 1}
    rows = [{**common, "test_acc1": top1, "epoch": epoch} for epoch, top1 in enumerate((25.0, 50.0, 41.5))]
    (root / "log.txt").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root, model


def test_publish_writes_upstreams_files_and_a_hub_folder_timm_reloads(run, tmp_path):
    root, model = run
    out = tmp_path / "published"
    written = publish(root / "best.pth", "repnext_m0", out, fused=True)
    stem = release_name("repnext_m0", 3)
    assert (
        stem == "repnext_m0_without_distill_3e" and release_name("recnext_m1", 300, True) == "recnext_m1_distill_300e"
    )
    assert [p.relative_to(out).as_posix() for p in written] == [
        "hf/README.md",
        "hf/config.json",
        "hf/model.safetensors",
        f"{stem}.pth",
        f"{stem}.txt",
        f"{stem}_fused.pt",
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in written} == {0o666 & ~umask}  # readable as any file the user writes
    saved = torch.load(out / f"{stem}.pth", weights_only=True)
    assert list(saved) == ["model"] and all(torch.equal(saved["model"][k], v) for k, v in model.state_dict().items())
    assert (out / f"{stem}.txt").read_bytes() == (root / "log.txt").read_bytes()

    x = torch.randn(2, 3, 32, 32)
    reloaded = timm.create_model("repnext_m0", pretrained=True, num_classes=3, **TINY, pretrained_cfg_overlay=dict(
        file=str(out / "hf" / "model.safetensors"), num_classes=3)).eval()  # fmt: skip
    fused, weights = load_weights("repnext_m0", out / f"{stem}_fused.pt", model_kwargs=TINY)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
        assert weights.form == "fused" and torch.allclose(fused(x), model(x), atol=1e-5)
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["architecture"] == "repnext_m0" and config["label_names"] == CLASSES
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and "tag" not in config["pretrained_cfg"]

    card = (out / "hf" / "README.md").read_text()
    deploy = reparameterize(model)
    params = (count_parameters(deploy) + standalone_batchnorm_parameters(model)) / 1e6
    assert card.startswith("---\ndatasets:\n- builtin:tiny\n") and "# Model Card for RepNeXt-M0" in card
    assert f"**Parameters**: {params:.2f}M" in card and f"**MACs**: {count_macs(deploy, 32)[0] / 1e9:.3f}G" in card
    assert "| best top-1 (%) | 50.00 (epoch 1) | training log |" in card
    assert "- **Depths**: (1, 1, 1, 1)" in card and "arxiv.org/abs/2406.16004" in card
    assert "Latency" not in card  # not measured, so not claimed

    again = publish(root / "best.pth", "repnext_m0", tmp_path / "again", fused=True)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]  # reproducible, TorchScript included
    # nor does it depend on where the checkout or torch live (TorchScript's debug records hold their paths)
    with zipfile.ZipFile(out / f"{stem}_fused.pt") as archive:
        scripted = b"".join(archive.read(name) for name in archive.namelist())
    for folder in (Path(repnext.__file__).parents[1], Path(torch.__file__).parent, Path(sys.prefix)):
        assert os.fsencode(folder) not in scripted, folder


def test_card_reports_eval_and_latency_tables(run, tmp_path):
    root, _ = run
    (tmp_path / "eval.csv").write_text(
        "model,weights,form,split,images,top1,top5,loss,top1_agreement,max_abs_logit_diff\n"
        "repnext_m0,best.pth,train,val,6,50.00,100.00,1.0,,\nrepnext_m0,best.pth,fused,val,6,50.00,100.00,1.0,100.00,1e-6\n"
    )  # fmt: skip
    (tmp_path / "latency.csv").write_text(
        "model,form,backend,device,threads,resolution,median_ms,iqr_ms\nrepnext_m0,fused,eager,cpu,2,224,32.25,5.1\n"
    )
    publish(root / "best.pth", "repnext_m0", tmp_path / "out", eval_table=tmp_path / "eval.csv",
            latency_table=tmp_path / "latency.csv")  # fmt: skip
    card = (tmp_path / "out" / "hf" / "README.md").read_text()
    assert "| top-1 (%), fused form | 50.00 | `repnext eval` |" in card
    assert "| same top-1 in both forms (%) | 100.00 | `repnext eval --both` |" in card
    assert "**Latency**: 32.2ms (fused, eager, batch 1, 2 threads, 224x224, cpu" in card


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path):
    root, _ = run
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    (tmp_path / "latency.csv").write_text("model,form,backend\nrecnext_m0,fused,eager\n")
    cases = [
        ([str(tmp_path / "notes.txt"), "--model", "repnext_m0"], r"notes\.txt: not a PyTorch checkpoint"),
        ([str(root / "best.pth"), "--model", "repnext_m1"], r"trained as repnext_m0 .*, not --model repnext_m1"),
        ([str(root / "best.pth"), "--model", "repnext_m0", "--latency", str(tmp_path / "latency.csv")],
         r"--latency: .*latency\.csv: no fused eager row for repnext_m0"),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit, match=f"^repnext publish: .*{message}") as caught:
            main(["publish", *argv, "-o", str(tmp_path / "out")])
        assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.csv", "notes.txt"]
