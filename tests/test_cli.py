import pytest

from repnext.cli import main

# `python -m repnext` in a fresh interpreter: tests/test_kernels.py runs `python -m repnext notebook`.


def test_list_and_unknown_models(capsys):
    main(["list"])
    assert {"repnext_m0", "recnext_a5", "repnext_u3_base"} <= set(capsys.readouterr().out.split())
    with pytest.raises(SystemExit, match="unknown model 'repnext_m9'; available:"):
        main(["verify", "repnext_m9"])


def test_verify_writes_table(tmp_path, capsys):
    out = tmp_path / "check.csv"
    main(["verify", "repnext_m0", "--resolution", "64", "--batch-size", "1", "--dtype", "float64", "-o", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0] == "model,form,dtype,resolution,max_abs_err,max_rel_err,tolerance,passed"
    assert [line.split(",")[1:4] for line in lines[1:]] == [
        ["deploy", "float64", "64x64"],
        ["single_branch", "float64", "64x64"],
    ]
    assert all(line.endswith(",true") for line in lines[1:])
    main(["verify", "--models", "repnext_m0", "--resolution", "40", "--format", "json"])
    assert '"passed": true' in capsys.readouterr().out


def test_verify_fails_when_tolerance_is_impossible(tmp_path):
    with pytest.raises(SystemExit, match="beyond tolerance"):
        main(["verify", "repnext_m0", "--resolution", "40", "--dtype", "float32", "--tolerance", "0"])


def test_bad_arguments_exit_nonzero_with_reason(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["verify", "repnext_m0", "--resolution", "0"])
    assert raised.value.code == 2
    assert "--resolution: must be a positive integer, got 0" in capsys.readouterr().err


def test_text_checkpoints_huge_resolutions_and_missing_params_are_one_line(tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("a text file, not weights\n")
    cases = [
        (["export", "repnext_m0", "--format", "onnx", "--checkpoint", str(notes), "-o", str(tmp_path / "m.onnx")],
         "repnext export"),
        (["features", "repnext_m0", "--weights", str(notes), "-o", str(tmp_path / "maps")], "repnext features"),
        (["train", "repnext_m0", "--data", "builtin:photos", "--out", str(tmp_path / "run"), "--resume", str(notes)],
         "repnext train: --resume"),
    ]  # fmt: skip
    for argv, prefix in cases:
        with pytest.raises(SystemExit, match=f"^{prefix}: {notes}: not a PyTorch checkpoint") as caught:
            main(argv)
        assert "\n" not in str(caught.value)
    with pytest.raises(SystemExit, match=r"^repnext stats: --resolution 100000: one forward pass needs about [\d.]+ "
                       r"GiB of activations .* more than the [\d.]+ GiB of memory available$"):  # fmt: skip
        main(["stats", "repnext_m0", "--resolution", "100000"])
    monkeypatch.chdir(tmp_path)  # outside the repository root, params.yaml is not here
    with pytest.raises(SystemExit, match=r"^repnext notebook: --params: params\.yaml: no such file in .* \(run from"):
        main(["notebook", "source.ipynb", "out.ipynb", "--section", "model_stats"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
