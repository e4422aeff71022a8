"""Keys and changes for the signing tests (tests/test_signing*.py): key pairs as PEM files, one byte
changed in a manifest.json or a blob, and the CLI run the way a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deltaformat.artifact import DIGEST_FILE, MANIFEST_FILE, blob_path, open_artifact
from deltaformat.digests import blob_digest
from deltaformat.errors import SignatureError

SIGNATURE_EXIT = SignatureError.exit_code


@dataclass
class Keys:
    private: Path
    public: Path
    other_private: Path
    other_public: Path


def write_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key pair as PEM files, the kind `openssl ecparam -name prime256v1 -genkey` makes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def copy_of(artifact: Path, tmp_path: Path, name: str = "copy") -> Path:
    folder = tmp_path / name
    shutil.copytree(artifact, folder)
    return folder


def change_manifest_byte(folder: Path) -> None:
    """One byte of manifest.json changed (its description), manifest.json.sha256 updated to match:
    a change every integrity check without a signature accepts."""
    data = (folder / MANIFEST_FILE).read_bytes()
    changed = data.replace(b"Tiny chat delta for tests", b"Tiny chat delta for tesTs", 1)
    assert changed != data and len(changed) == len(data)
    (folder / MANIFEST_FILE).write_bytes(changed)
    (folder / DIGEST_FILE).write_text(blob_digest(changed) + "\n")


def change_blob_byte(folder: Path) -> str:
    """One byte of the largest blob flipped, in place; returns the blob's digest."""
    art = open_artifact(folder)
    digest = max(art.manifest.blob_digests(), key=lambda d: blob_path(art.blob_dir, d).stat().st_size)
    path = blob_path(art.blob_dir, digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return digest


def cli(*args: str, cache: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``paramdelta ARGS`` in a subprocess with its own cache and no registry, token or key password but ``env``'s."""
    base = {k: v for k, v in os.environ.items() if k not in ("PARAMDELTA_REGISTRY", "PARAMDELTA_TOKEN", "PARAMDELTA_KEY_PASSWORD")}
    env = {**base, "PARAMDELTA_CACHE": str(cache), "PARAMDELTA_QUIET": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "deltaformat.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """A one-line error with the signature exit status, naming what is wrong."""
    assert done.returncode == SIGNATURE_EXIT, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
