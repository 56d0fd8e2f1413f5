"""The vendored upstream logs match their manifest byte for byte; altered, missing or extra files are named."""

import shutil
from pathlib import Path

import pytest

from repnext.analysis.vendored import ManifestError, read_manifest, verify_vendored

ROOT = Path(__file__).parents[2]
UPSTREAM = ROOT / "logs" / "upstream"


def test_every_vendored_file_matches_the_manifest():
    files = verify_vendored(UPSTREAM)
    assert len(files) == 147
    assert {(f.repository, f.commit) for f in files} == {
        ("suous/RepNeXt", "f515377837207e883cc9d6bcc38f9c98fcd2bc1f"),
        ("suous/RecNeXt", "a0277f46e0b00f633ff8ef69c807e4ec5dd01062"),
    }
    assert {"RepNeXt/LICENSE", "RecNeXt/LICENSE"} <= {f.local for f in files}


@pytest.fixture
def copy(tmp_path):
    """A small vendored folder: the manifest restricted to the two LICENSE files and one log."""
    keep = {"RepNeXt/LICENSE", "RecNeXt/LICENSE", "RepNeXt/logs/repnext_m0_distill_300e.txt"}
    lines = (UPSTREAM / "MANIFEST.tsv").read_text().splitlines()
    rows = [line for line, item in zip(lines[1:], read_manifest(UPSTREAM), strict=True) if item.local in keep]
    (tmp_path / "MANIFEST.tsv").write_text("\n".join([lines[0], *rows]) + "\n")
    for local in keep:
        (tmp_path / local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(UPSTREAM / local, tmp_path / local)
    assert len(verify_vendored(tmp_path)) == 3
    return tmp_path


def test_an_altered_file_is_named(copy):
    path = copy / "RepNeXt/logs/repnext_m0_distill_300e.txt"
    data = bytearray(path.read_bytes())
    data[10] ^= 1  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"repnext_m0_distill_300e\.txt: sha256 differs"):
        verify_vendored(copy)
    path.write_bytes(bytes(data) + b"\n")
    with pytest.raises(ManifestError, match=r"repnext_m0_distill_300e\.txt: \d+ bytes, MANIFEST.tsv says"):
        verify_vendored(copy)


def test_missing_and_unlisted_files_are_named(copy):
    (copy / "RecNeXt/extra.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"RecNeXt/extra\.txt: not listed"):
        verify_vendored(copy)
    (copy / "RecNeXt/extra.txt").unlink()
    (copy / "RecNeXt/LICENSE").unlink()
    with pytest.raises(ManifestError, match=r"RecNeXt/LICENSE: listed in MANIFEST.tsv but missing"):
        verify_vendored(copy)


def test_a_malformed_manifest_row_is_named_by_line(copy):
    manifest = copy / "MANIFEST.tsv"
    manifest.write_text(manifest.read_text() + "suous/RepNeXt\tabc\tx.txt\n")
    with pytest.raises(ManifestError, match=r"MANIFEST.tsv:5: malformed row"):
        verify_vendored(copy)
