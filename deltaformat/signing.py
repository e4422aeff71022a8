"""Signed deltas: who vouches for a delta, checked before any of it is used.

The signature is the OpenSSF model-signing format (v1.0, the ``model-signing`` package's), so
the ecosystem's tools read it: a Sigstore bundle (v0.3) holding a DSSE envelope whose payload
is an in-toto statement; its predicate lists, by path and sha256, the files of the artifact
folder that make the delta what it is::

    manifest.json         the digest of manifest.json's bytes  (in a registry: the OCI manifest's config)
    blobs/sha256/<hex>    each blob manifest.json references   (in a registry: its layers)

and names, as ``ignore_paths``, the files that are not the delta (signatures/, source.json, the
derived manifest.json.sha256): ``model_signing verify key`` checks an artifact folder signed here,
and one signature covers a delta in a folder and in a registry alike.

Keys: an EC private key (P-256, P-384 or P-521, PEM) signs; its public key verifies, offline.
A key is named by its fingerprint, ``sha256:`` of its PEM SubjectPublicKeyInfo (the bundle's
public key hint). Keyless signing (Sigstore's Fulcio certificates for an OIDC identity, logged
in Rekor) needs the internet: sign a pulled artifact folder with ``model_signing sign sigstore``
(ignoring the same paths) and check it with ``model_signing verify sigstore``; paramdelta
itself reads key-based signatures only.

Where a signature is kept: ``ARTIFACT/signatures/<key id>.sigstore.json`` next to a local
artifact; in a registry, an OCI referrer whose subject is the delta's OCI manifest
(artifactType the bundle's media type, the bundle its one layer; deltaformat.referrers), as
cosign stores its bundles. ``require_signed`` checks a delta before anything else reads it:
for a registry reference from the OCI manifest, its referrers and the signature blobs alone,
so an unsigned, wrongly signed or altered delta is refused before any of its blobs is downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deltaformat.artifact import BLOB_DIR, DIGEST_FILE, MANIFEST_FILE, SOURCE_FILE, Artifact, blob_path, open_artifact
from deltaformat.digests import PREFIX, hex_of
from deltaformat.errors import CorruptBlobError, FormatError, SignatureError, invalid_field
from deltaformat.fsutil import write_file_atomic
from deltaformat.manifest import MAX_MANIFEST_BYTES, parse_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from deltaformat.oci import Descriptor
    from deltaformat.reference import Reference
    from deltaformat.registry_client import RegistryClient
    from deltaformat.resolve import DeltaRef, Source

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SIGNATURE_DIR = "signatures"
SIGNATURE_SUFFIX = ".sigstore.json"
NOT_THE_DELTA = [SIGNATURE_DIR, SOURCE_FILE, DIGEST_FILE]  # the statement's ignore_paths
KEY_ANNOTATION = "vnd.paramdelta.signature.key"  # the signing key's fingerprint, on the referrer (listings show it)
CREATED_ANNOTATION = "org.opencontainers.image.created"
# A bundle lists every blob (~200 bytes each, base64), a manifest.json ~100 per chunk: twice its cap holds any.
MAX_BUNDLE_BYTES = 2 * MAX_MANIFEST_BYTES
MAX_SIGNATURES = 16  # signatures by the key asked for (or by no named key) that are fetched and checked
READ_BYTES = 1 << 20
CURVES = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}  # model-signing's, with their hashes
BLOB_PREFIX = f"{BLOB_DIR.as_posix()}/"


# -- the format ----------------------------------------------------------------------------


class Resource(BaseModel):
    """One signed file of the artifact folder."""

    name: str
    algorithm: Literal["sha256"]
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")


class Predicate(BaseModel):
    """model-signing v1.0's predicate (a v1.0 reader ignores other fields)."""

    model_config = ConfigDict(extra="allow")

    serialization: dict[str, Any]
    resources: list[Resource]


class Statement(BaseModel):
    """An in-toto v1 statement carrying the model-signing predicate."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[dict[str, Any]] = Field(min_length=1, max_length=1)
    predicateType: Literal["https://model_signing/signature/v1.0"]
    predicate: Predicate


class DsseSignature(BaseModel):
    sig: str
    keyid: str = ""


class DsseEnvelope(BaseModel):
    payload: str
    payloadType: str
    signatures: list[DsseSignature] = Field(min_length=1)


class PublicKeyHint(BaseModel):
    hint: str | None = None


class VerificationMaterial(BaseModel):
    model_config = ConfigDict(extra="allow")

    publicKey: PublicKeyHint | None = None


class Bundle(BaseModel):
    """The Sigstore bundle fields a key-based signature uses."""

    model_config = ConfigDict(extra="allow")

    mediaType: str
    verificationMaterial: VerificationMaterial
    dsseEnvelope: DsseEnvelope


@dataclass(frozen=True)
class Signed:
    """What a signature vouches for: manifest.json's digest and the digests of the blobs it references."""

    manifest: str
    blobs: frozenset[str]

    def resources(self) -> list[Resource]:
        names = {MANIFEST_FILE: self.manifest, **{BLOB_PREFIX + hex_of(d): d for d in self.blobs}}
        return [Resource(name=n, algorithm="sha256", digest=hex_of(names[n])) for n in sorted(names)]

    @classmethod
    def from_resources(cls, resources: Iterable[Resource]) -> Signed:
        manifest, blobs = None, set()
        for r in resources:
            if r.name == MANIFEST_FILE:
                manifest = PREFIX + r.digest
            elif r.name == BLOB_PREFIX + r.digest:  # a blob's name is its digest: anything else is not ours
                blobs.add(PREFIX + r.digest)
            else:
                raise SignatureError(f"the signature lists {r.name!r}, which is not a file of a delta artifact")
        if manifest is None:
            raise SignatureError(f"the signature does not list {MANIFEST_FILE}")
        return cls(manifest, frozenset(blobs))


@dataclass(frozen=True)
class SignatureInfo:
    """A signature as a listing shows it: the key's fingerprint, when it was made (as its signer said), where it is."""

    key: str | None
    created: str | None
    location: str


# -- keys -------------------------------------------------------------------------------------


def load_private_key(path: str | os.PathLike[str], password: str | None = None) -> ec.EllipticCurvePrivateKey:
    """An EC private key from a PEM file (``password`` for an encrypted one); errors name the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:  # encrypted without a password, or a password for a key that has none
        raise ValueError(f"{path}: the private key is {'not ' if password else ''}encrypted"
                         f"{'' if password else ': set PARAMDELTA_KEY_PASSWORD'}") from None
    except ValueError:
        raise ValueError(f"{path}: not a PEM private key (or a wrong password)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in CURVES:
        raise ValueError(f"{path}: signing needs an EC private key on P-256, P-384 or P-521 (as model-signing); "
                         f"make one with: openssl ecparam -name prime256v1 -genkey -noout -out {path}")
    return key


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """An EC public key from a PEM file; errors name the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(_read_key_file(path))
    except ValueError:
        raise ValueError(f"{path}: not a PEM public key (openssl ec -in PRIVATE.pem -pubout writes one)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
        raise ValueError(f"{path}: not an EC public key on P-256, P-384 or P-521")
    return key


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``sha256:`` of the key's PEM SubjectPublicKeyInfo: the hint model-signing puts in a bundle."""
    from cryptography.hazmat.primitives import serialization

    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PREFIX + hashlib.sha256(pem).hexdigest()


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such key file")
    if p.stat().st_size > 64 << 10:
        raise ValueError(f"{path}: {p.stat().st_size:,} bytes is not a PEM key")
    return p.read_bytes()


def _hash_for(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    algorithm: hashes.HashAlgorithm = getattr(hashes, CURVES[key.curve.name])()
    return algorithm


# -- making and reading bundles ---------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1's pre-authentication encoding: what is signed, so the type cannot be swapped."""
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)


def make_bundle(signed: Signed, key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A model-signing v1.0 bundle over ``signed``, by ``key``; ``name`` is informative (the subject's name)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    resources = signed.resources()
    root = hashlib.sha256(b"".join(bytes.fromhex(r.digest) for r in resources)).hexdigest()  # model-signing's subject digest
    statement = Statement(type_=STATEMENT_TYPE, subject=[{"name": name, "digest": {"sha256": root}}],
                          predicateType=PREDICATE_TYPE, predicate=Predicate(
                              serialization={"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                                             "ignore_paths": NOT_THE_DELTA},
                              resources=resources))
    payload = statement.model_dump_json(by_alias=True).encode()
    signature = key.sign(pae(IN_TOTO_PAYLOAD_TYPE, payload), ec.ECDSA(_hash_for(key.public_key())))
    bundle = Bundle(mediaType=BUNDLE_MEDIA_TYPE,
                    verificationMaterial=VerificationMaterial(publicKey=PublicKeyHint(hint=hex_of(key_fingerprint(key.public_key()))),
                                                              tlogEntries=[]),
                    dsseEnvelope=DsseEnvelope(payload=_b64(payload), payloadType=IN_TOTO_PAYLOAD_TYPE,
                                              signatures=[DsseSignature(sig=_b64(signature), keyid="")]))
    return bundle.model_dump_json(exclude_none=True).encode()


def read_bundle(data: bytes) -> Bundle:
    """Parse a bundle (not yet trusted: nothing is checked but its shape)."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise SignatureError(f"{len(data):,} bytes, more than the {MAX_BUNDLE_BYTES:,} a signature may have")
    try:
        bundle = Bundle.model_validate_json(data)
    except ValidationError as exc:
        raise SignatureError(f"not a Sigstore bundle ({invalid_field(exc)})") from None
    if not bundle.mediaType.startswith("application/vnd.dev.sigstore.bundle"):
        raise SignatureError(f"not a Sigstore bundle (mediaType {bundle.mediaType!r})")
    return bundle


def bundle_key(bundle: Bundle) -> str | None:
    """The fingerprint of the key a bundle says it is by (its hint), when it names one."""
    hint = bundle.verificationMaterial.publicKey.hint if bundle.verificationMaterial.publicKey else None
    return PREFIX + hint if hint else None


def open_bundle(bundle: Bundle, key: ec.EllipticCurvePublicKey) -> Signed:
    """What ``bundle`` vouches for, once its signature is checked with ``key``; SignatureError if it is not by it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    envelope = bundle.dsseEnvelope
    if envelope.payloadType != IN_TOTO_PAYLOAD_TYPE:
        raise SignatureError(f"payload type {envelope.payloadType!r}, not {IN_TOTO_PAYLOAD_TYPE!r}")
    payload, ok = _unb64(envelope.payload, "payload"), False
    for s in envelope.signatures:
        try:
            key.verify(_unb64(s.sig, "signature"), pae(envelope.payloadType, payload), ec.ECDSA(_hash_for(key)))
            ok = True
            break
        except InvalidSignature:
            continue
    if not ok:
        raise SignatureError(f"the signature does not verify with key {key_fingerprint(key)}: it was altered or made by another key")
    try:
        statement = Statement.model_validate_json(payload)
    except ValidationError as exc:
        raise SignatureError(f"the signed statement is not model-signing v1.0 ({invalid_field(exc)})") from None
    return Signed.from_resources(statement.predicate.resources)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SignatureError(f"the bundle's {what} is not base64") from None


@dataclass(frozen=True)
class Candidate:
    """A signature found for a delta, not yet trusted: where it is, its bytes (None when they were
    not read, ``skipped`` says why), and the key a listing says it is by, when it says."""

    label: str
    data: bytes | None
    named_key: str | None = None
    skipped: str | None = None


def find_signed(candidates: Iterable[Candidate], key: ec.EllipticCurvePublicKey, where: str, manifest_digest: str) -> Signed:
    """The content of the first candidate that is by ``key`` and vouches for ``manifest_digest``; else
    SignatureError saying why: unsigned, signed only by other keys, or signed by this key over something
    else (the delta was altered since)."""
    fingerprint, others, problems, seen = key_fingerprint(key), set(), [], 0
    for c in candidates:
        seen += 1
        if c.named_key is not None and c.named_key != fingerprint:
            others.add(c.named_key)
            continue
        try:
            if c.data is None:
                raise SignatureError(c.skipped or "not read")
            bundle = read_bundle(c.data)
            named = bundle_key(bundle)
            if named is not None and named != fingerprint:
                others.add(named)
                continue
            signed = open_bundle(bundle, key)
        except SignatureError as exc:
            problems.append(f"signature {c.label}: {exc}")
            continue
        if signed.manifest == manifest_digest:
            return signed
        problems.append(f"manifest.json has digest {manifest_digest} but key {fingerprint} signed {signed.manifest}: "
                        "the delta was changed after it was signed")
    if problems:
        more = f" ({len(problems) - 1} other signature(s) failed too)" if len(problems) > 1 else ""
        raise SignatureError(f"{where}: {problems[0]}{more}")
    if others:
        raise SignatureError(f"{where}: not signed by key {fingerprint}; its {seen} signature(s) are by {', '.join(sorted(others))}")
    raise SignatureError(f"{where}: not signed (no signature found); refusing an unsigned delta")


def _check_blob_set(signed: Signed, blobs: Iterable[str], where: str) -> None:
    have = frozenset(blobs)
    if have != signed.blobs:
        odd = sorted(have ^ signed.blobs)[0]
        side = "is referenced but not signed" if odd in have else "is signed but not referenced"
        raise SignatureError(f"{where}: blob {odd} {side}; the delta was changed after it was signed")


# -- local artifacts --------------------------------------------------------------------------


def signature_path(folder: str | os.PathLike[str], fingerprint: str) -> Path:
    """Where a key's signature of a local artifact is kept (one per key: signing again replaces it)."""
    return Path(folder) / SIGNATURE_DIR / f"{hex_of(fingerprint)[:16]}{SIGNATURE_SUFFIX}"


def sign_artifact(folder: str | os.PathLike[str], key: ec.EllipticCurvePrivateKey) -> Path:
    """Sign a local artifact (after checking every blob against its digest); returns the signature's path."""
    art = open_artifact(folder)
    m = art.manifest
    for d in m.blob_digests():  # only what is intact is vouched for
        actual = _file_digest(blob_path(art.blob_dir, d), f"{art.location}: blob {d}")
        if actual != d:
            raise CorruptBlobError(f"{art.location}: blob {d} is corrupt (its bytes have digest {actual}); refusing to sign it")
    data = make_bundle(Signed(art.digest, frozenset(m.blob_digests())), key, _subject_name(m.name, m.version, art.digest))
    path = signature_path(folder, key_fingerprint(key.public_key()))
    path.parent.mkdir(exist_ok=True)
    write_file_atomic(path, data)
    return path


def check_artifact(folder: str | os.PathLike[str], key: ec.EllipticCurvePublicKey) -> Artifact:
    """The artifact at ``folder``, once proven signed by ``key`` and unchanged since: manifest.json and every
    blob against the signed digests. The Artifact returned holds the manifest bytes that were checked."""
    folder = Path(folder)
    where = str(folder)
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        open_artifact(folder)  # says what is wrong with the folder
    with open(mpath, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)  # bounded even if the file grows after a size check
    if len(data) > MAX_MANIFEST_BYTES:
        raise FormatError(f"{where}: {MANIFEST_FILE} has more than the {MAX_MANIFEST_BYTES:,} bytes a reader holds")
    digest = PREFIX + hashlib.sha256(data).hexdigest()
    signed = find_signed(_local_bundles(folder), key, where, digest)
    try:
        manifest = parse_manifest(data)
    except FormatError as exc:  # signed, so the signer vouched for a malformed manifest: say both
        raise FormatError(f"{where}: signed, but {exc}") from None
    _check_blob_set(signed, manifest.blob_digests(), where)
    for d in sorted(signed.blobs):
        actual = _file_digest(folder / BLOB_DIR / hex_of(d), f"{where}: blob {d}")
        if actual != d:
            raise SignatureError(f"{where}: blob {d} is not what was signed (its bytes have digest {actual}); "
                                 "the delta was changed after it was signed")
    art = open_artifact(folder)
    if art.manifest_bytes != data:
        raise SignatureError(f"{where}: {MANIFEST_FILE} changed while it was checked")
    return art


def local_signatures(folder: str | os.PathLike[str]) -> list[SignatureInfo]:
    """The signatures kept next to a local artifact, as a listing shows them (not checked)."""
    found = []
    for c in _local_bundles(Path(folder)):
        try:
            key = bundle_key(read_bundle(c.data)) if c.data is not None else None
        except SignatureError:
            key = None
        found.append(SignatureInfo(key, None, c.label))
    return found


def _local_bundles(folder: Path) -> list[Candidate]:
    """The signature files next to an artifact (regular files only; at most MAX_SIGNATURES are read)."""
    sig_dir = folder / SIGNATURE_DIR
    if not sig_dir.is_dir():
        return []
    found: list[Candidate] = []
    for p in sorted(sig_dir.iterdir()):
        if not p.name.endswith(SIGNATURE_SUFFIX) or p.is_symlink() or not p.is_file():
            continue
        size = p.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            found.append(Candidate(str(p), None, skipped=f"{size:,} bytes, more than a signature may have"))
        elif len(found) >= MAX_SIGNATURES:
            found.append(Candidate(str(p), None, skipped=f"not read: more than {MAX_SIGNATURES} signatures"))
        else:
            found.append(Candidate(str(p), p.read_bytes()))
    return found


def _file_digest(path: Path, what: str) -> str:
    """sha256 of a regular file's bytes (a symbolic link or a missing file is an error naming ``what``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise CorruptBlobError(f"{what} is missing") from None
    except OSError:
        raise CorruptBlobError(f"{what} is not a regular file (a symbolic link?)") from None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(READ_BYTES):
            h.update(chunk)
    return PREFIX + h.hexdigest()


def _subject_name(name: str | None, version: str | None, digest: str) -> str:
    return f"{name}:{version}" if name and version else (name or digest)


# -- registry references ----------------------------------------------------------------------


def sign_reference(ref: str, key: ec.EllipticCurvePrivateKey, *, registry: str | None = None,
                   token: str | None = None, credentials: tuple[str, str] | None = None) -> tuple[str, str]:
    """Sign a delta in a registry by its OCI manifest (no blob is downloaded) and push the signature as
    a referrer of it; returns (the delta pinned by digest, the referrer's digest)."""
    from deltaformat.oci import OCI_IMAGE_MANIFEST, Descriptor, parse_oci_manifest
    from deltaformat.referrers import push_referrer

    parsed, client = _connect(ref, registry, token, credentials)
    with client:
        digest, oci_bytes = client.resolve(parsed.name, parsed.reference)
        oci = parse_oci_manifest(oci_bytes)  # a delta's, or refused
        signed = Signed(oci.config.digest, frozenset(d.digest for d in oci.layers))
        bundle = make_bundle(signed, key, _subject_name(parsed.name, parsed.tag, digest))
        subject = Descriptor(mediaType=OCI_IMAGE_MANIFEST, digest=digest, size=len(oci_bytes))
        annotations = {KEY_ANNOTATION: key_fingerprint(key.public_key()), "dev.sigstore.bundle.content": "dsse-envelope",
                       "dev.sigstore.bundle.predicateType": PREDICATE_TYPE}
        referrer = push_referrer(client, parsed.name, subject, BUNDLE_MEDIA_TYPE, bundle, annotations)
    return _pinned(parsed, client.url, digest), referrer


def check_reference(ref: str, key: ec.EllipticCurvePublicKey, *, registry: str | None = None,
                    token: str | None = None, credentials: tuple[str, str] | None = None) -> str:
    """Prove a registry delta signed by ``key`` from its OCI manifest, referrers and signature blobs alone
    (none of its blobs is downloaded); returns it pinned by digest, so what is then pulled is what was checked."""
    from deltaformat.oci import parse_oci_manifest
    from deltaformat.referrers import list_referrers

    parsed, client = _connect(ref, registry, token, credentials)
    fingerprint = key_fingerprint(key)
    with client:
        digest, oci_bytes = client.resolve(parsed.name, parsed.reference)
        where = f"{_pinned(parsed, client.url, digest)}"
        oci = parse_oci_manifest(oci_bytes)
        listed = list_referrers(client, parsed.name, digest, BUNDLE_MEDIA_TYPE)

        def bundles() -> Iterator[Candidate]:  # fetched one at a time: the first good one ends the search
            fetched = 0
            for d in listed:
                named = (d.annotations or {}).get(KEY_ANNOTATION)
                if named is not None and named != fingerprint:  # another key's: not worth a download
                    yield Candidate(d.digest, None, named)
                elif fetched >= MAX_SIGNATURES:
                    yield Candidate(d.digest, None, named, f"not fetched: more than {MAX_SIGNATURES} signatures")
                else:
                    fetched += 1
                    try:
                        yield Candidate(d.digest, _fetch_bundle(client, parsed.name, d.digest, digest), named)
                    except SignatureError as exc:
                        yield Candidate(d.digest, None, named, str(exc))

        signed = find_signed(bundles(), key, where, oci.config.digest)
        _check_blob_set(signed, (d.digest for d in oci.layers), where)
        return _pinned(parsed, client.url, digest)


def reference_signatures(client: RegistryClient, name: str, digest: str) -> list[SignatureInfo]:
    """A registry delta's signatures as a listing shows them, from its referrers alone (not checked)."""
    from deltaformat.referrers import list_referrers

    return signatures_listed(list_referrers(client, name, digest, BUNDLE_MEDIA_TYPE))


def signatures_listed(referrers: Iterable[Descriptor | dict[str, Any]]) -> list[SignatureInfo]:
    """Key fingerprint and time of each signature among a manifest's referrers (descriptors, as the referrers
    API lists them), for a listing or the registry's delta page. Informative: nothing is verified here."""
    found = []
    for r in referrers:
        d = r if isinstance(r, dict) else r.model_dump()
        if d.get("artifactType") != BUNDLE_MEDIA_TYPE:
            continue
        annotations = d.get("annotations") or {}
        found.append(SignatureInfo(annotations.get(KEY_ANNOTATION), annotations.get(CREATED_ANNOTATION), str(d.get("digest"))))
    return found


def _fetch_bundle(client: RegistryClient, name: str, referrer: str, subject: str) -> bytes:
    from deltaformat.referrers import get_blob, get_manifest

    art = get_manifest(client, name, referrer)
    if art.subject is None or art.subject.digest != subject:
        raise SignatureError(f"referrer {referrer} does not name {subject} as its subject")
    layers = [layer for layer in art.layers if layer.mediaType == BUNDLE_MEDIA_TYPE]
    if len(layers) != 1:
        raise SignatureError(f"referrer {referrer} has {len(layers)} bundle layers, not 1")
    try:
        return get_blob(client, name, layers[0], MAX_BUNDLE_BYTES)
    except (FormatError, CorruptBlobError) as exc:
        raise SignatureError(str(exc)) from None


def _connect(ref: str, registry: str | None, token: str | None,
             credentials: tuple[str, str] | None) -> tuple[Reference, RegistryClient]:
    """The reference parsed, and a client for its registry (the rules of deltaformat.client: which
    registry, which token; ``credentials`` (user, password) for this call, else docker's config.json)."""
    from deltaformat.client import RegistryClient, _endpoint
    from deltaformat.reference import parse_reference

    parsed = parse_reference(ref)
    url, tok = _endpoint(parsed, registry, token)
    return parsed, RegistryClient(url, tok, basic=credentials)


def _pinned(parsed: Reference, url: str, digest: str) -> str:
    from deltaformat.reference import Reference

    return str(Reference(parsed.name, parsed.tag, digest, url))


# -- the entry points ---------------------------------------------------------------------------


def sign(target: str | os.PathLike[str], private_key: str | os.PathLike[str], *, password: str | None = None,
         registry: str | None = None, token: str | None = None, credentials: tuple[str, str] | None = None) -> tuple[str, str]:
    """Sign a local artifact folder or a registry reference with an EC private key (PEM file).
    Returns (where the signature is: a file, or the referrer's digest; the key's fingerprint)."""
    key = load_private_key(private_key, password)
    fingerprint = key_fingerprint(key.public_key())
    if Path(target).exists():
        return str(sign_artifact(target, key)), fingerprint
    _, referrer = sign_reference(os.fspath(target), key, registry=registry, token=token, credentials=credentials)
    return referrer, fingerprint


def require_signed(targets: Sequence[DeltaRef | Source], public_key: str | os.PathLike[str], *,
                   registry: str | None = None, token: str | None = None) -> list[DeltaRef | Source]:
    """Each of ``targets`` (folders, registry references or their Sources) proven signed by the key in
    ``public_key``, as what apply and verify should then read: a checked Artifact for a folder, a Source
    pinned by digest for a registry version (its blobs are downloaded only after this). SignatureError otherwise."""
    from deltaformat.resolve import FolderSource, RegistrySource, resolve

    key = load_public_key(public_key)
    checked: list[DeltaRef | Source] = []
    for t in targets:
        source = resolve(t, registry=registry, token=token)
        if isinstance(source, FolderSource):
            checked.append(check_artifact(source.folder, key))
        elif isinstance(source, RegistrySource):
            pinned = check_reference(source.location, key, registry=source.registry, token=source.token)
            checked.append(RegistrySource(pinned, registry=source.registry, token=source.token))
        else:  # an opened Artifact: its folder, if any, is not known for sure
            raise ValueError(f"{source.location}: an opened Artifact cannot be checked for a signature; pass its folder or reference")
    return checked


__all__ = ["sign", "require_signed", "sign_artifact", "check_artifact", "sign_reference", "check_reference",
           "signatures_listed", "reference_signatures", "local_signatures", "key_fingerprint", "load_private_key",
           "load_public_key", "SignatureInfo", "Signed", "BUNDLE_MEDIA_TYPE", "SignatureError"]
