"""Signed deltas, local artifact folders (issue #12, item 3): sign, verify --key, apply --require-signature.

A signature is the OpenSSF model-signing format: the reference implementation (the
``model-signing`` package) must verify what ``paramdelta sign`` writes, and paramdelta must
verify what it writes. Refusals (unsigned, another key's, a changed blob or manifest) are one
line with exit status 14, and nothing is written.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import deltaformat
from deltaformat import signing
from deltaformat.artifact import open_artifact
from deltaformat.errors import CorruptBlobError, SignatureError
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.signed import Keys, assert_refused, change_blob_byte, change_manifest_byte, cli, copy_of, write_key_pair
from paramdelta_dev.tiny_models import load_state


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    return Keys(*write_key_pair(folder, "signer"), *write_key_pair(folder, "stranger"))


@pytest.fixture(scope="session")
def signed_delta(artifacts: Artifacts, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the test delta signed by ``keys.private`` (tests copy it again before changing it)."""
    folder = tmp_path_factory.mktemp("signed") / "delta"
    shutil.copytree(artifacts.delta, folder)
    signing.sign(folder, keys.private)
    return folder


# -- sign and verify ------------------------------------------------------------------------


def test_cli_sign_then_verify_with_the_public_key(artifacts: Artifacts, keys: Keys, tmp_path: Path):
    folder = copy_of(artifacts.delta, tmp_path)
    signed = cli("sign", str(folder), "--key", str(keys.private), cache=tmp_path / "cache")
    assert signed.returncode == 0, signed.stderr
    fingerprint = signing.key_fingerprint(signing.load_public_key(keys.public))
    assert fingerprint in signed.stdout
    assert [p.parent.name for p in folder.rglob("*.sigstore.json")] == ["signatures"]

    done = cli("verify", str(folder), "--key", str(keys.public), cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert f"signed by key {fingerprint}" in done.stdout
    # the signature does not disturb anything that reads the folder without a key
    assert cli("verify", str(folder), cache=tmp_path / "cache").returncode == 0


def test_the_reference_implementation_verifies_our_signature(signed_delta: Path, keys: Keys):
    """`model_signing verify key` (OpenSSF model-signing) accepts the folder and its signature as they are."""
    from model_signing import verifying

    [signature] = (signed_delta / "signatures").iterdir()
    verifying.Config().use_elliptic_key_verifier(public_key=keys.public).verify(signed_delta, signature)


def test_the_reference_implementations_signature_verifies_here(artifacts: Artifacts, keys: Keys, tmp_path: Path):
    """A folder signed by model-signing itself (ignoring what is not the delta) passes `verify --key`."""
    from model_signing import hashing
    from model_signing import signing as ms_signing

    folder = copy_of(artifacts.delta, tmp_path)
    (folder / "signatures").mkdir()
    ignored = [folder / p for p in signing.NOT_THE_DELTA]
    ms_signing.Config().use_elliptic_key_signer(private_key=keys.private).set_hashing_config(
        hashing.Config().set_ignored_paths(paths=ignored)).sign(folder, folder / "signatures" / "model-signing.sigstore.json")
    done = cli("verify", str(folder), "--key", str(keys.public), cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr


def test_two_keys_two_signatures_either_verifies(signed_delta: Path, keys: Keys, tmp_path: Path):
    folder = copy_of(signed_delta, tmp_path)
    signing.sign(folder, keys.other_private)
    signing.sign(folder, keys.private)  # again: replaces that key's signature
    assert len(list((folder / "signatures").iterdir())) == 2
    for public in (keys.public, keys.other_public):
        assert signing.require_signed([folder], public)[0].digest == open_artifact(folder).digest


def test_sign_refuses_a_corrupt_artifact(artifacts: Artifacts, keys: Keys, tmp_path: Path):
    folder = copy_of(artifacts.delta, tmp_path)
    digest = change_blob_byte(folder)
    with pytest.raises(CorruptBlobError, match=digest):
        signing.sign(folder, keys.private)
    assert not (folder / "signatures").exists()


def test_sign_refuses_a_key_it_cannot_use(artifacts: Artifacts, keys: Keys, tmp_path: Path):
    folder = copy_of(artifacts.delta, tmp_path)
    for key, words in ((keys.public, "not a PEM private key"), (tmp_path / "none.pem", "no such key file")):
        done = cli("sign", str(folder), "--key", str(key), cache=tmp_path / "cache")
        assert done.returncode == 2 and str(key) in done.stderr and words in done.stderr, done.stderr
    assert not (folder / "signatures").exists()


# -- apply --require-signature and verify --key refuse -------------------------------------------


def test_apply_require_signature_reproduces_post(signed_delta: Path, artifacts: Artifacts, keys: Keys, tmp_path: Path):
    done = cli("apply", str(signed_delta), "--base", str(artifacts.base), "--out", str(tmp_path / "model"),
               "--require-signature", str(keys.public), cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert "bit-exact" in done.stdout
    applied, post = load_state(tmp_path / "model"), load_state(artifacts.post)
    assert applied.keys() == post.keys() and all(applied[k].equal(post[k]) for k in post)


def _unsigned(signed: Path, keys: Keys, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    folder = copy_of(signed, tmp_path)
    shutil.rmtree(folder / "signatures")
    return folder, ("not signed",)


def _wrong_key(signed: Path, keys: Keys, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    folder = copy_of(signed, tmp_path)
    shutil.rmtree(folder / "signatures")
    signing.sign(folder, keys.other_private)
    other = signing.key_fingerprint(signing.load_public_key(keys.other_public))
    return folder, ("not signed by key", other)


def _blob_byte(signed: Path, keys: Keys, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    folder = copy_of(signed, tmp_path)
    return folder, (change_blob_byte(folder), "changed after it was signed")


def _manifest_byte(signed: Path, keys: Keys, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    folder = copy_of(signed, tmp_path)
    change_manifest_byte(folder)
    return folder, ("manifest.json", "changed after it was signed")


def _junk_signature(signed: Path, keys: Keys, tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    folder = copy_of(signed, tmp_path)
    [signature] = (folder / "signatures").iterdir()
    bundle = json.loads(signature.read_bytes())
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01  # the signature's last byte: a forgery that still parses
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    signature.write_text(json.dumps(bundle))
    return folder, ("does not verify with key",)


REFUSALS = {"unsigned": _unsigned, "wrong-key": _wrong_key, "one-blob-byte": _blob_byte,
            "one-manifest-byte": _manifest_byte, "forged-signature": _junk_signature}


@pytest.mark.parametrize("case", REFUSALS)
def test_apply_require_signature_refuses(case: str, signed_delta: Path, artifacts: Artifacts, keys: Keys, tmp_path: Path):
    folder, words = REFUSALS[case](signed_delta, keys, tmp_path)
    out = tmp_path / "model"
    done = cli("apply", str(folder), "--base", str(artifacts.base), "--out", str(out),
               "--require-signature", str(keys.public), cache=tmp_path / "cache")
    assert_refused(done, str(folder), *words)
    assert not out.exists() and not any(p.name.startswith(".model") for p in tmp_path.iterdir())
    assert_refused(cli("verify", str(folder), "--key", str(keys.public), cache=tmp_path / "cache"), *words)


def test_a_changed_manifest_passes_every_check_but_the_signature(signed_delta: Path, keys: Keys, tmp_path: Path):
    """Why --require-signature: a manifest.json edited along with its .sha256 is intact by every other measure."""
    folder, _ = _manifest_byte(signed_delta, keys, tmp_path)
    assert deltaformat.verify(folder, quiet=True).blobs > 0
    with pytest.raises(SignatureError, match="changed after it was signed"):
        deltaformat.verify(folder, quiet=True, require_signature=keys.public)


def test_library_apply_refuses_before_writing(signed_delta: Path, artifacts: Artifacts, keys: Keys, tmp_path: Path):
    folder, _ = _wrong_key(signed_delta, keys, tmp_path)
    with pytest.raises(SignatureError, match="not signed by key"):
        deltaformat.apply([folder], artifacts.base, tmp_path / "model", quiet=True, require_signature=keys.public)
    assert not (tmp_path / "model").exists()
    result = deltaformat.apply([signed_delta], artifacts.base, tmp_path / "model", quiet=True, require_signature=keys.public)
    assert result.verified_exact


def test_a_signature_that_lists_another_file_is_refused(artifacts: Artifacts, keys: Keys, tmp_path: Path):
    """A bundle by the right key whose resources name a file that is no part of a delta is not trusted."""
    folder = copy_of(artifacts.delta, tmp_path)
    art = open_artifact(folder)
    key = signing.load_private_key(keys.private)
    signed = signing.Signed(art.digest, frozenset(art.manifest.blob_digests()))
    bundle = json.loads(signing.make_bundle(signed, key, "x"))
    # re-sign a statement whose resources also name ../elsewhere
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"].append({"name": "../elsewhere", "algorithm": "sha256", "digest": "0" * 64})
    payload = json.dumps(statement).encode()
    sig = key.sign(signing.pae(signing.IN_TOTO_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    bundle["dsseEnvelope"] = {"payload": base64.b64encode(payload).decode(), "payloadType": signing.IN_TOTO_PAYLOAD_TYPE,
                              "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]}
    (folder / "signatures").mkdir()
    (folder / "signatures" / "odd.sigstore.json").write_text(json.dumps(bundle))
    assert_refused(cli("verify", str(folder), "--key", str(keys.public), cache=tmp_path / "cache"), "../elsewhere")


def test_an_encrypted_key_signs_with_its_password_from_the_environment(artifacts: Artifacts, keys: Keys, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(keys.private.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"s3cret")))
    folder = copy_of(artifacts.delta, tmp_path)
    refused = cli("sign", str(folder), "--key", str(encrypted), cache=tmp_path / "cache")
    assert refused.returncode == 2 and "PARAMDELTA_KEY_PASSWORD" in refused.stderr, refused.stderr
    assert not (folder / "signatures").exists()
    done = cli("sign", str(folder), "--key", str(encrypted), cache=tmp_path / "cache", env={"PARAMDELTA_KEY_PASSWORD": "s3cret"})
    assert done.returncode == 0, done.stderr
    assert cli("verify", str(folder), "--key", str(keys.public), cache=tmp_path / "cache").returncode == 0


def test_signatures_listed_from_a_referrers_index_for_the_delta_page():
    """What the registry's delta page shows: key and time of each signature among a version's referrers, nothing else."""
    index = {"manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "1" * 64, "size": 700,
         "artifactType": signing.BUNDLE_MEDIA_TYPE,
         "annotations": {signing.KEY_ANNOTATION: "sha256:" + "a" * 64, signing.CREATED_ANNOTATION: "2026-12-02T20:00:00Z"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "2" * 64, "size": 500,
         "artifactType": "application/spdx+json"},  # an SBOM: not a signature
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "3" * 64, "size": 700,
         "artifactType": signing.BUNDLE_MEDIA_TYPE},  # pushed by another tool: no key named
    ]}
    assert signing.signatures_listed(index["manifests"]) == [
        signing.SignatureInfo("sha256:" + "a" * 64, "2026-12-02T20:00:00Z", "sha256:" + "1" * 64),
        signing.SignatureInfo(None, None, "sha256:" + "3" * 64),
    ]
