"""Checks of the PEM files TLS is configured with, shared by ``serve --tls-*`` and the clients' ``--tls-*``: every
problem found before anything starts, as one line naming the flag to fix.

The ``ssl`` module loads the files as gRPC and the HTTP clients will (OpenSSL/BoringSSL read the same PEM), so a
file that passes here is not refused later for its format.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from triton_deploy.errors import Problem

FLAGS = {"ca": "--tls-ca", "cert": "--tls-cert", "key": "--tls-key"}


def pem_problems(ca: str | Path | None, cert: str | Path | None, key: str | Path | None) -> list[Problem]:
    """Every problem with a set of PEM files, as (what is wrong, the flag to fix): missing or unreadable files, a CA
    file with no certificate, a certificate or key that does not parse, a key that does not match the certificate,
    one of --tls-cert/--tls-key without the other. Checked with the ``ssl`` module: what it loads, gRPC loads too."""
    problems = [(f"{FLAGS[name]} {path}: {reason}", f"check {FLAGS[name]}")
                for name, path in (("ca", ca), ("cert", cert), ("key", key)) if path is not None
                for reason in [_unreadable(Path(path))] if reason]
    if problems:
        return problems
    if (cert is None) != (key is None):
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        return [(f"{given} needs {missing}: a certificate and its private key go together", f"add {missing}")]
    if ca is not None:
        try:
            ssl.create_default_context(cafile=str(ca))
        except (ssl.SSLError, ValueError) as exc:
            problems.append((f"--tls-ca {ca} holds no PEM certificate ({_reason(exc)})", "check --tls-ca"))
    if cert is not None and key is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key))
        except ssl.SSLError as exc:
            problems.append(_pair_problem(Path(cert), Path(key), exc))
    return problems


def _unreadable(path: Path) -> str | None:
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc)


def _pair_problem(cert: Path, key: Path, exc: ssl.SSLError) -> Problem:
    reason = str(_reason(exc))
    if "KEY_VALUES_MISMATCH" in reason or "key values mismatch" in str(exc):
        return f"--tls-key {key} is not the private key of --tls-cert {cert}", "pass the key that matches --tls-cert"
    text = cert.read_text(errors="replace")
    if "-----BEGIN CERTIFICATE-----" not in text:
        return f"--tls-cert {cert} is not a PEM certificate", "check --tls-cert"
    return f"--tls-key {key} is not a PEM private key ({reason})", "check --tls-key (an unencrypted PEM key)"
