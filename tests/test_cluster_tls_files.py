"""The client's TLS material (experiments/spotsearch/cluster/tls_files.py): private files, checked one flag at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotsearch.cluster.messages import ClusterError
from spotsearch.cluster.tls_files import check_tls_files, private_tls_files

from .experiment_runs import (
    assert_one_line_error,
    run_experiment,
)


def test_client_tls_files_are_private_and_removed(tmp_path):
    outputs = {"tls_ca_pem": "ca", "tls_client_cert_pem": "cert", "tls_client_key_pem": "key"}
    with private_tls_files(outputs) as paths:
        for path in paths.values():
            assert Path(path).stat().st_mode & 0o777 == 0o600
        assert Path(paths["key"]).parent.stat().st_mode & 0o777 == 0o700
        assert Path(paths["key"]).read_text() == "key"
    assert not Path(paths["key"]).exists()


@pytest.mark.parametrize(
    ("flag", "content", "message"),
    [
        ("--tls-ca", "", "--tls-ca: {path} is empty"),
        ("--tls-cert", "\n\n", "--tls-cert: {path} is empty"),
        ("--tls-key", "", "--tls-key: {path} is empty"),
        ("--tls-cert", "client.key", "--tls-cert: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ("--tls-key", "client.pem", "--tls-key: {path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
        (
            "--tls-ca",
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            "--tls-ca: {path} is not a valid CA certificate",
        ),
        ("--tls-key", "worker.key", "--tls-cert, --tls-key: "),
    ],
)
def test_bad_tls_files_get_one_line_naming_the_flag(loopback, tmp_path, flag, content, message):
    files = {
        flag_: str(loopback.tls_dir / name)
        for flag_, name in (("--tls-ca", "ca.pem"), ("--tls-cert", "client.pem"), ("--tls-key", "client.key"))
    }
    bad = tmp_path / "bad.pem"
    source = loopback.tls_dir / content
    bad.write_text(source.read_text() if content.endswith((".pem", ".key")) else content)
    files[flag] = str(bad)
    args = [item for pair in files.items() for item in pair]
    run = run_experiment("--scheduler", loopback.address, *args, "--timeout", "5", cwd=tmp_path)
    assert_one_line_error(run, message.format(path=bad))
    if flag == "--tls-key" and content == "worker.key":
        assert "are not a certificate and its own key" in run.stderr


def test_an_unreadable_tls_file_is_named(monkeypatch, tmp_path):
    """Root reads everything, so the refusal is played by the file system call itself."""
    (tmp_path / "ca.pem").write_text("x")
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "ca.pem":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(ClusterError, match=rf"^--tls-ca: cannot read {tmp_path}/ca.pem \(permission denied\)$"):
        check_tls_files(str(tmp_path / "ca.pem"), "c.pem", "k.pem")
