"""Certificates for the TLS tests, made by the ``openssl`` command line.

``make_certs(folder)`` writes a private certificate authority, a server
certificate for ``localhost`` / ``127.0.0.1`` signed by it, a client
certificate signed by it (for brokers that ask for one), and a second,
unrelated authority that a client can be wrongly told to trust.  Keys are
unencrypted EC P-256, valid for one day: they live only as long as a test.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import require_brokers

HOW_TO = "install openssl (`apt-get install openssl`)"


@dataclass(frozen=True)
class Certs:
    ca: Path          # the authority that signed server and client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path    # an authority that signed nothing here


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path)


def _authority(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _key(key)
    _openssl("req", "-x509", "-new", "-key", key, "-sha256", "-days", "1", "-subj",
             f"/CN=trustgraph-pubsub test {name}", "-out", cert)
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    extfile = folder / f"{name}.ext"
    extfile.write_text(ext)
    _key(key)
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "1", "-sha256", "-extfile", extfile, "-out", cert)
    return cert, key


def make_certs(folder: Path) -> Certs:
    """A CA, a server and a client certificate, and an unrelated CA, in ``folder``."""
    if shutil.which("openssl") is None:
        if require_brokers():
            pytest.fail(f"openssl not found; {HOW_TO}")
        pytest.skip(f"openssl not found; {HOW_TO}")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _authority(folder, "ca")
    other, _ = _authority(folder, "other-ca")
    server = _signed(folder, "localhost", ca,
                     "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                     "extendedKeyUsage=serverAuth\n")
    client = _signed(folder, "client", ca, "extendedKeyUsage=clientAuth\n")
    for path in folder.glob("*.key"):  # brokers running as another user must read them
        path.chmod(0o644)
    return Certs(ca=ca[0], server_cert=server[0], server_key=server[1],
                 client_cert=client[0], client_key=client[1], other_ca=other)
