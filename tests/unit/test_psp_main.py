"""The emulator's command line: help, and exit status 2 on bad arguments."""

from __future__ import annotations

import pytest

from psp.emulator.__main__ import main, parse_args


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--data-dir" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--port", "x"], ["--bogus"], ["--log-level", "LOUD"]])
def test_bad_arguments_exit_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_defaults() -> None:
    args = parse_args([])
    assert (args.host, args.port, args.data_dir, args.api_key) == ("127.0.0.1", 12111, None, None)
