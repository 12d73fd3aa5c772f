"""Throwaway certificates for the TLS tests, made at test time with the ``cryptography`` package.

``make_pki(folder)`` writes a CA, a server certificate for 127.0.0.1 (an IP SAN only, so ``localhost`` is a
hostname mismatch), a client certificate signed by the same CA, and a second, unrelated CA with its own client
certificate (the "wrong CA" cases). Keys are EC P-256: quick to make on a busy machine.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # trusts nothing the server presents
    other_client_cert: Path  # signed by other_ca: the server must refuse it under mutual TLS
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))


def _ca(folder: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(f"{stem} test CA", _name(f"{stem} test CA"), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key, _write_cert(cert, folder / f"{stem}-ca.pem")


def _leaf(folder: Path, stem: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, server: bool,
          ) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(stem, ca.subject, key.public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write_cert(cert, folder / f"{stem}.pem"), _write_key(key, folder / f"{stem}-key.pem")


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_path = _ca(folder, "test")
    other, other_key, other_path = _ca(folder, "other")
    server_cert, server_key = _leaf(folder, "server", ca, ca_key, server=True)
    client_cert, client_key = _leaf(folder, "client", ca, ca_key, server=False)
    other_cert, other_client_key = _leaf(folder, "other-client", other, other_key, server=False)
    return Pki(ca_path, server_cert, server_key, client_cert, client_key, other_path, other_cert, other_client_key)
