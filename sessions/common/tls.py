"""TLS between hosts: a service's certificate files, and the context a client hop verifies with.

A service serves HTTPS when `LUCID_TLS_CERT_FILE` and `LUCID_TLS_KEY_FILE` are both set
(uvicorn reads them; the key is a secret file, checked like every other and never logged).
A hop to an `https://` upstream verifies the peer's chain and host name against
`LUCID_TLS_CA_FILE`, or against the system's CAs (and `SSL_CERT_FILE`) when it is unset;
an `http://` upstream stays plain (loopback or the compose network).  Mutual TLS is
optional: a service given `LUCID_TLS_CLIENT_CA_FILE` accepts only clients presenting a
certificate that CA signed, and a hop presents `LUCID_TLS_CLIENT_CERT_FILE` with its key.
The service token is sent in every case.

Every failure to read or parse a file is a ConfigError naming the variable and the file,
never the file's contents.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from sessions.common.secrets import ConfigError, read_secret_file

__all__ = ["client_context", "log_tls_failure", "server_files", "tls_failure"]


def _no_password() -> bytes:
    """An encrypted key is refused (nothing could type its passphrase): never prompt."""
    return b""


def server_files(cert: Path | None, key: Path | None, *,
                 client_ca: Path | None = None) -> tuple[Path | None, Path | None]:
    """Return the (certificate, key) files to serve HTTPS with; (None, None): plain HTTP.

    Raises ConfigError unless both or neither are set, both are readable and non-empty,
    and the key is the certificate's, unencrypted; and if `client_ca` is set without them.
    """
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("LUCID_TLS_CLIENT_CA_FILE needs LUCID_TLS_CERT_FILE and "
                              "LUCID_TLS_KEY_FILE: client certificates are asked for over TLS")
        return None, None
    if cert is None or key is None:
        raise ConfigError("set both LUCID_TLS_CERT_FILE and LUCID_TLS_KEY_FILE, or neither")
    read_secret_file(cert, what="TLS certificate")
    read_secret_file(key, what="TLS key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            cert, key, password=_no_password)
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"LUCID_TLS_CERT_FILE ({cert}) and LUCID_TLS_KEY_FILE ({key}) must "
                          "be a PEM certificate chain and its unencrypted private key"
                          ) from None
    if client_ca is not None:
        client_context(client_ca, env="LUCID_TLS_CLIENT_CA_FILE")
    return cert, key


def client_context(ca_file: Path | None, *, env: str = "LUCID_TLS_CA_FILE",
                   cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Return a context that verifies a server's chain and host name (TLS 1.2 at least).

    It trusts only the certificates of `ca_file`, or the system's CAs when it is None;
    with `cert` and `key` it presents that client certificate (mutual TLS).  Raises
    ConfigError, naming `env`, on a file that is missing or holds no PEM certificate.
    """
    if ca_file is not None:
        read_secret_file(ca_file, what=env)  # a clear message for a missing or empty file
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"{env} ({ca_file}) holds no PEM CA certificate") from None
    if context.verify_mode is not ssl.CERT_REQUIRED or not context.check_hostname:
        raise ConfigError("this Python's default TLS context does not verify servers")
    context.minimum_version = max(context.minimum_version, ssl.TLSVersion.TLSv1_2)
    # Python 3.13's defaults on every Python: a certificate that passes here passes in the images
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise ConfigError("set both LUCID_TLS_CLIENT_CERT_FILE and "
                              "LUCID_TLS_CLIENT_KEY_FILE, or neither")
        read_secret_file(cert, what="TLS client certificate")
        read_secret_file(key, what="TLS client key")
        try:
            context.load_cert_chain(cert, key, password=_no_password)
        except (ssl.SSLError, ValueError):
            raise ConfigError(f"LUCID_TLS_CLIENT_CERT_FILE ({cert}) and "
                              f"LUCID_TLS_CLIENT_KEY_FILE ({key}) must be a PEM certificate "
                              "chain and its unencrypted private key") from None
    return context


def tls_failure(exc: BaseException) -> str | None:
    """Return why a TLS handshake failed, if one did anywhere in exc's chain; else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verification failed ({seen.verify_message})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed ({seen.reason or type(seen).__name__})"
        seen = seen.__cause__ or seen.__context__
    return None


def log_tls_failure(log: logging.Logger, exc: BaseException, upstream: str) -> None:
    """Log, as an error, why TLS to `upstream` failed, if that is what ended exc.

    A refused certificate is a misconfiguration only the operator can fix, so the
    reason goes to the log; the caller's answer stays a plain 503.
    """
    why = tls_failure(exc)
    if why is not None:
        log.error("TLS to %s failed: %s", upstream, why)
