"""Progress bars: on stderr for long commands run by hand (``--progress``, or a terminal), never otherwise."""

import io

import pytest

from repnext import progress
from repnext.cli import main


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_default_follows_whether_stderr_is_a_terminal(monkeypatch):
    assert progress.wanted(True) and not progress.wanted(False)
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert progress.wanted(None)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.wanted(None)


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "repnext_m0", "--resolution", "32", "--batch-size", "1", "--dtype", "float32"],
        ["stats", "repnext_m0", "--resolution", "32"],
    ],
    ids=["verify", "stats"],
)
def test_long_commands_draw_a_bar_when_asked_and_stay_quiet_otherwise(argv, capsys):
    main([*argv, "--progress"])
    captured = capsys.readouterr()
    assert f"{argv[0]}:" in captured.err and "/1 [" in captured.err and "repnext_m0" in captured.out
    main([*argv, "--no-progress"])
    assert capsys.readouterr().err == ""
    main(argv)  # pytest's stderr is not a terminal: no bar by default, as in a pipeline log
    assert capsys.readouterr().err == ""
