"""The emulator's HTTPS arguments: a certificate goes with its key, and files that cannot serve are refused
with exit status 2 before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from psp.emulator.__main__ import main, parse_args
from psp.emulator.server import EmulatorProcess, EmulatorServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": where / "ca.pem", "cert": where / "cert.pem", "key": where / "key.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    files["junk"] = where / "junk.pem"
    files["junk"].write_text("not a certificate\n")
    return files


def test_good_files_are_taken(pki: dict[str, Path]) -> None:
    argv = ["--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--ca-bundle", str(pki["ca"])]
    args = parse_args(argv)
    assert (args.tls_cert, args.tls_key, args.ca_bundle) == (pki["cert"], pki["key"], pki["ca"])


def test_plain_http_by_default() -> None:
    args = parse_args([])
    assert (args.tls_cert, args.tls_key, args.ca_bundle) == (None, None, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["--tls-cert", "{cert}"],
        ["--tls-key", "{key}"],
        ["--tls-cert", "{junk}", "--tls-key", "{key}"],
        ["--tls-cert", "{cert}", "--tls-key", "{ca}"],  # a key that is not the certificate's
        ["--tls-cert", "{cert}", "--tls-key", "{key}.absent"],
        ["--ca-bundle", "{junk}"],
        ["--ca-bundle", "{ca}.absent"],
    ],
)
def test_unusable_tls_arguments_exit_two(
    argv: list[str], pki: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([arg.format(**pki) for arg in argv]) == 2
    assert "usage:" in capsys.readouterr().err


def test_the_runners_refuse_a_certificate_without_its_key(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="both"):
        EmulatorServer(tls_cert=pki["cert"])
    with pytest.raises(ValueError, match="both"):
        EmulatorProcess(None, tls_key=pki["key"])
