"""Every command has --help; bad arguments exit 2 with one clear line."""

from __future__ import annotations

import pytest

from ops.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        [], ["nope"], ["up", "--port", "x"], ["up", "--nodes", "two"], ["merchant"], ["merchant", "create"],
        ["webhooks"],
        ["webhooks", "resend"], ["webhooks", "resend", "ch_1"],
        ["webhooks", "resend", "evt_1", "--endpoint", "x"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["up", "--help"],
        ["migrate", "--help"],
        ["verify", "--help"],
        ["merchant", "create", "--help"],
        ["webhooks", "resend", "--help"],
        ["recon", "--help"],
        ["demo", "--help"],
        ["simulate", "--help"],
        ["loadtest", "--help"],
        ["chaos", "--help"],
    ],
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    assert "usage: payray" in capsys.readouterr().out


def test_psp_emulator_help_is_the_emulators(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["psp-emulator", "--help"])
    assert code == 0
    assert "--data-dir" in capsys.readouterr().out


def test_up_refuses_an_impossible_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_verify_without_a_stack_says_so(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PAYRAY_HOME", str(tmp_path))
    monkeypatch.delenv("PAYRAY_ADMIN_KEY", raising=False)
    assert main(["verify"]) == 2
    assert "no running stack" in capsys.readouterr().err


def test_bad_setting_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PAYRAY_WALLET_HOSTS", "many")
    assert main(["migrate"]) == 2
    assert "PAYRAY_WALLET_HOSTS" in capsys.readouterr().err


@pytest.mark.parametrize("nodes", ["0", "-1", "9"])
def test_up_refuses_a_node_count_it_cannot_start(nodes: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--nodes", nodes]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--nodes must be 1..8" in err
