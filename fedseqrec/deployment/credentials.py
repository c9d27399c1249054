"""TLS certificates for the SuperLink and authentication keys for SuperNodes, made with ``cryptography``.

    ca.crt, ca.key          a certificate authority of our own (keep ca.key off the network)
    server.pem, server.key  the SuperLink's certificate, signed by the CA, valid for the given host names / IPs
    <name>                  a SuperNode's private key (OpenSSH, EC P-384): stays on that node's host
    <name>.pub              its public key: registered on the SuperLink with ``flwr supernode register``

Flower verifies the SuperLink with ``ca.crt`` (``--root-certificates`` on SuperNodes, ``root-certificates`` in the
``flwr`` CLI's connection) and admits only SuperNodes whose public key is registered (``--enable-supernode-auth``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedseqrec.errors import UserError

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALID_DAYS = 365


@dataclass(frozen=True)
class Certificates:
    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` by creating a new file beside it (``O_EXCL | O_NOFOLLOW``, created with ``mode``) and renaming
    it over the old one: an existing key file keeps neither its content nor its old, perhaps world-readable mode,
    and a symlink planted at ``path`` is replaced, never written through."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode, follow_symlinks=False)  # the umask may have narrowed a public file's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_private(path: Path, data: bytes) -> None:
    """Private keys are created readable by their owner only, never world-readable even for an instant."""
    _write_file(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_file(path, data, 0o644)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedseqrec"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_certificates(folder: Path, hosts: list[str] | None = None, days: int = VALID_DAYS) -> Certificates:
    """A CA and a SuperLink certificate signed by it, valid for ``hosts`` (the names SuperNodes and the ``flwr``
    CLI dial) and for loopback, where the SuperLink's own SuperExec reaches its Runtime API."""
    hosts = list(dict.fromkeys([*(hosts or []), *DEFAULT_HOSTS]))
    if any(not host.strip() for host in hosts):
        raise UserError("--hosts: empty host name")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedseqrec CA"))
        .issuer_name(_name("fedseqrec CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    certs = Certificates(folder)
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    _write_private(folder / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    _write_public(certs.ca, ca_cert.public_bytes(pem))
    _write_private(certs.server_key, server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    _write_public(certs.server_cert, server_cert.public_bytes(pem))
    return certs


def make_node_key(path: Path) -> Path:
    """A SuperNode's key pair: ``path`` (private, OpenSSH) and ``path.pub`` (public); returns the public key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    _write_private(path, private)
    public = path.with_name(path.name + ".pub")
    openssh = serialization.Encoding.OpenSSH
    _write_public(public, key.public_key().public_bytes(openssh, serialization.PublicFormat.OpenSSH) + b"\n")
    return public


def write_credentials(out: Path, hosts: list[str], nodes: int, force: bool = False) -> list[str]:
    """``fedseqrec deploy credentials``: the CA, the SuperLink's certificate and ``nodes`` key pairs in ``out``;
    what was written, in lines for people."""
    if nodes < 0:
        raise UserError(f"--nodes {nodes}: must be 0 or more (the SuperNode key pairs to make)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose a folder for the certificates and keys")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out}: folder is not empty; refusing to overwrite keys (use --force)")
    certs = make_certificates(out, hosts)
    lines = [
        f"CA certificate (every SuperNode and the flwr CLI): {certs.ca.resolve()}",
        f"SuperLink certificate and key:                    {certs.server_cert.resolve()}, "
        f"{certs.server_key.resolve()}",
    ]
    for node in range(nodes):
        public = make_node_key(out / f"node-{node:03d}")
        lines.append(f"SuperNode {node} key pair: {public.with_suffix('').resolve()} (private) and {public.resolve()}")
    lines.append(f"keep {(out / 'ca.key').resolve()} offline: it signs SuperLink certificates")
    return lines
