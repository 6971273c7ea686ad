"""First run of docker-compose.pi.yml: create the stack's secret files, once (`make secrets`).

    python containers/init_secrets.py [DIR] [--node-name NAME] [--hostname NAME ...]

Writes into DIR (default ./secrets, mode 0700) every file docker-compose.pi.yml names
under `secrets:`, skipping any that exists, so re-running never replaces a key:

    master.key, signing.key          the processor's keys (only the processor mounts them)
    service.token, admin.token       the internal token and the bootstrap admin token
    tls-cert.pem, tls-key.pem        a self-signed certificate for the gateway's HTTPS port
    mongo-password, mongo-keyfile    the MongoDB root password and replica-set key file
    metadata-url                     storage's MongoDB URL (it holds the password)

Compose without Swarm bind-mounts secret files with their host owner and mode.  Run as
root, each file goes to the user of the container reading it (65532 for ours, 999 for
MongoDB) with mode 0400.  Otherwise the files are mode 0444 and the 0700 directory is what
keeps other host users out.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sessions.common.secrets import new_token, write_new_secret
from sessions.core import MasterKey, NoteSigner

SERVICE_UID = 65532
MONGO_UID = 999  # the official mongo image's mongodb user
MONGO_USER = "lucid"
CERT_DAYS = 825


def self_signed(hostnames: list[str]) -> tuple[str, str]:
    """Return (certificate PEM, key PEM) of a fresh P-256 self-signed server certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def public_key_pin(cert_pem: bytes) -> str:
    """Return the certificate's public-key pin as the CLI's --pin-sha256 and curl's
    --pinnedpubkey take it: sha256// and the base64 SHA-256 of its SubjectPublicKeyInfo."""
    spki = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def plan(node_name: str, hostnames: list[str]) -> dict[str, tuple[Callable[[], str], int]]:
    """Return each secret file's maker and the uid of the container that reads it."""
    password = secrets.token_urlsafe(32)
    tls: dict[str, str] = {}

    def tls_part(part: str) -> Callable[[], str]:
        def make() -> str:
            if not tls:
                tls["cert"], tls["key"] = self_signed(hostnames)
            return tls[part]
        return make

    return {
        "master.key": (lambda: MasterKey.generate().to_text(), SERVICE_UID),
        "signing.key": (lambda: NoteSigner.generate(node_name).key_text(), SERVICE_UID),
        "service.token": (new_token, SERVICE_UID),
        "admin.token": (new_token, SERVICE_UID),
        "tls-cert.pem": (tls_part("cert"), SERVICE_UID),
        "tls-key.pem": (tls_part("key"), SERVICE_UID),
        "mongo-password": (lambda: password, MONGO_UID),
        "mongo-keyfile": (lambda: secrets.token_hex(256), MONGO_UID),  # base64 alphabet only
        "metadata-url": (lambda: f"mongodb://{MONGO_USER}:{password}@mongo:27017/lucid"
                         "?replicaSet=rs0&authSource=admin", SERVICE_UID),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", type=Path, default=Path("secrets"))
    parser.add_argument("--node-name", default=os.environ.get("LUCID_NODE_NAME", "lucid-pi"),
                        help="the processor's LUCID_NODE_NAME (names the signing key)")
    parser.add_argument("--hostname", action="append", default=[],
                        help="a name or address clients use for the gateway (repeatable)")
    args = parser.parse_args(argv)
    host = socket.gethostname()
    hostnames = [*args.hostname, host, f"{host}.local", "localhost", "127.0.0.1", "::1"]
    directory: Path = args.dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    existing = {p.name for p in directory.iterdir()}
    if "mongo-password" in existing and "metadata-url" not in existing:
        print("init-secrets: metadata-url is missing but mongo-password exists; write it by hand "
              "(see the README), not with a new password", file=sys.stderr)
        return 1
    root = os.geteuid() == 0
    for name, (make, uid) in plan(args.node_name, list(dict.fromkeys(hostnames))).items():
        path = directory / name
        if write_new_secret(path, make()):
            print(f"init-secrets: created {path}")
        if root:
            os.chown(path, uid, uid)
            path.chmod(0o400)
        else:
            path.chmod(0o444)
    pin = public_key_pin((directory / "tls-cert.pem").read_bytes())
    print(f"init-secrets: the gateway's certificate pin (--pin-sha256): {pin}")
    if not root:
        print(f"init-secrets: not root, so the files are mode 0444 and {directory} (0700) keeps "
              "other host users out; as root they would belong to their container's user, "
              "mode 0400", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
