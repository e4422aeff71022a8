"""The ``paramdelta`` command: a thin shell that parses, calls the library, prints.

Every verb is one library call (deltaformat.extract, .apply, ...). Errors are shown
here, once, as one line on stderr with the exit status of their class (the table is in
deltaformat.errors.EXIT_CODES and in --help); PARAMDELTA_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltaformat import environment
from deltaformat.errors import EXIT_CODES, EXIT_INTERRUPTED, EXIT_USAGE, ParamDeltaError, from_os_error, invalid_field

# deltaformat.mount.DEFAULT_CACHE, written out so that building the parser does not import the mount (a test checks)
MOUNT_CACHE_HELP = "512MiB"

if TYPE_CHECKING:  # for annotations only: at run time each is imported by the verb that needs it
    from deltaformat.manifest import LossyErrors
    from deltaformat.sidefiles import LossyRecord
    from registry.settings import Settings

Handler = Callable[[argparse.Namespace], int]

# The server's commands, and what they import: the `registry` extra. `pip install paramdelta`
# alone is the format and the client, so these verbs are offered only when it is installed.
SERVER_VERBS = ("serve", "token", "gc", "db")
REGISTRY_EXTRA_MODULES = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "jinja2", "pydantic_settings")
REGISTRY_HINT = "pip install 'paramdelta[registry]'"


def missing_registry_modules() -> list[str]:
    """The registry extra's modules that are not installed (found without importing them: this runs on every command)."""
    return [name for name in REGISTRY_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def _extract(a: argparse.Namespace) -> int:
    from deltaformat import extract

    m = extract(a.base, a.post, a.out, name=a.name, version=a.version, description=a.description,
                license=a.license, force=a.force, quiet=a.quiet, lossy=a.lossy, format_version=a.format_version)
    s = m.summary()
    bpp = f" ({s['bytes_per_parameter']:.3f} B/param)" if s["bytes_per_parameter"] is not None else ""  # None: no parameters
    print(f"wrote {a.out}: {s['tensors']} tensors {s['kinds']}, {s['stored_bytes']:,} bytes{bpp}, "
          f"{s['patched_elements']} patched elements; {_exactness(s['exact'], s['lossy_preset'], s['lossy_errors'])}")
    return 0


def _exactness(exact: bool, preset: str | None, e: LossyErrors | None) -> str:
    """One plain phrase: lossless, or lossy with the preset and its recorded error.

    Given the summary's three fields rather than the summary: extract has a Manifest.summary(),
    inspect a plain dict that holds the same keys.
    """
    if exact:
        return "lossless (exact Δ)"
    assert e is not None  # the manifest's rule: an artifact that is not exact has a lossy stream, so recorded errors
    return (f"LOSSY (preset {preset}): max abs error {e['max_abs_error']:.3g}, "
            f"relative Frobenius error {e['rel_frobenius_error']:.3g} against the exact Δ")


def _lossy_phrase(record: LossyRecord) -> str:
    return (f"lossy delta (preset {record['preset']}), not bit-exact: max abs error {record['max_abs_error']:.3g}, "
            f"relative Frobenius error {record['rel_frobenius_error']:.3g} against the exact Δ")


def _apply(a: argparse.Namespace) -> int:
    from deltaformat import apply

    if a.device != "cpu" and importlib.util.find_spec("torch") is None:  # before any work: the GPU path is torch's
        raise ValueError(f"--device {a.device} needs torch: pip install 'paramdelta[torch]' (the CPU needs none)")
    # apply pre-flights the base against each manifest.json before it downloads any blob; with
    # --require-signature each delta is first proven signed (a registry version pinned by digest)
    r = apply(a.artifacts, a.base, a.out, alphas=a.alpha, shard_size=a.shard_size, force=a.force, quiet=a.quiet, device=a.device,
              require_signature=a.require_signature)
    for key, (base, post, new) in r.config_changes.items():
        print(f"config {key}: base={base!r} post={post!r} new base={new!r}", file=sys.stderr)
    exact = " (verified bit-exact against the post model)" if r.verified_exact else ""
    exact += "".join(f"; {_lossy_phrase(rec)}" for rec in r.lossy)
    print(f"wrote {r.out}: {r.tensors} tensors, {r.parameters:,} parameters{exact}")
    return 0


def _verify(a: argparse.Namespace) -> int:
    from deltaformat import verify

    r = verify(a.artifact, base=a.base, quiet=a.quiet, require_signature=a.key)
    proof = "; round trip on the base reproduces the post model bit for bit" if r.round_trip else ""
    if r.lossy is not None:
        proof = ("; the base is the original one" if r.base_is_original else "") + f"; {_lossy_phrase(r.lossy)}"
    signed = f"; signed by key {_fingerprint(a.key)}" if a.key else ""
    print(f"ok: {r.artifact}: {r.blobs} blobs, {r.stored_bytes:,} bytes intact{signed}{proof}")
    return 0


def _sign(a: argparse.Namespace) -> int:
    from deltaformat.signing import sign

    where, fingerprint = sign(a.target, a.key, password=environment.key_password(),
                              registry=a.registry, token=a.token, credentials=_credentials(a))
    print(f"signed {a.target} with key {fingerprint}: {where}")
    return 0


def _fingerprint(public_key: str) -> str:
    from deltaformat.signing import key_fingerprint, load_public_key

    return key_fingerprint(load_public_key(public_key))


def _inspect(a: argparse.Namespace) -> int:
    from deltaformat import inspect

    info = inspect(a.artifact)
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name'] or '(unnamed)'}:{info['version'] or '-'}  manifest {info['manifest_digest']}")
    if info["source"]:
        print(f"  pulled from: {info['source']}")
    for side in ("base", "post"):
        ref = info[side]
        rev = f"@{ref['commit'] or ref['revision']}" if (ref["commit"] or ref["revision"]) else ""
        print(f"  {side}: {ref['id']}{rev}  {ref['num_parameters']:,} params  {ref['fingerprint'][:19]}…")
    bpp = info["bytes_per_parameter"]
    print(f"  tensors: {info['tensors']} {info['kinds']}  stored {info['stored_bytes']:,} bytes"
          + (f" ({bpp:.3f} B/param)" if bpp is not None else ""))
    print(f"  codec: {info['codec']}  files: {', '.join(info['files']) or '-'}")
    print(f"  format v{info['format_version']}: {_exactness(info['exact'], info['lossy_preset'], info['lossy_errors'])}")
    return 0


def _export_lora(a: argparse.Namespace) -> int:
    from deltaformat.lora import export_lora

    r = export_lora(a.artifact, a.out, rank=a.rank, force=a.force, quiet=a.quiet)
    print(f"wrote {r.out}: LoRA rank {r.rank} on {r.targets} Linear weights, {r.bytes:,} bytes; "
          f"{r.captured:.1%} of ‖Δ‖² captured; left out: {r.left_out_summary()}")
    return 0


def _push(a: argparse.Namespace) -> int:
    from deltaformat.client import push

    r = push(a.artifact, a.reference, registry=a.registry, token=a.token, quiet=a.quiet, credentials=_credentials(a))
    mounted = f" ({r.mounted} mounted from another repository)" if r.mounted else ""
    print(f"pushed {r.reference} {r.digest}: uploaded {r.uploaded} blob(s), {r.uploaded_bytes:,} bytes; "
          f"{r.skipped} already in the registry{mounted}")
    return 0


def _pull(a: argparse.Namespace) -> int:
    from deltaformat.client import pull

    r = pull(a.reference, a.out, registry=a.registry, token=a.token, quiet=a.quiet, force=a.force,
             credentials=_credentials(a))
    m = r.artifact.manifest
    print(f"pulled {r.pinned} into {a.out}: {len(m.blob_digests())} blobs, {m.stored_bytes():,} bytes")
    return 0


def _read_credentials(a: argparse.Namespace, verb: str) -> tuple[str, str] | None:
    """(user, password) from --username and --password-stdin (or a prompt); None when neither was given."""
    if a.password_stdin and not a.username:  # stdin holds the password: the user cannot be asked for too
        raise ValueError(f"{verb}: --password-stdin needs --username")
    if not a.username and verb != "login":
        return None
    user = a.username or input("Username: ")
    if a.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        from getpass import getpass

        password = getpass()
    if not user or not password:
        raise ValueError(f"{verb}: a username and a password are needed")
    return user, password


def _credentials(a: argparse.Namespace) -> tuple[str, str] | None:
    return _read_credentials(a, a.command)


def _login(a: argparse.Namespace) -> int:
    from deltaformat import credentials
    from deltaformat.client import check_login

    user, password = _read_credentials(a, "login") or ("", "")
    host = check_login(a.host, user, password)  # refused credentials are never stored
    print(f"login succeeded for {host}; stored in {credentials.store(host, user, password)}")
    return 0


def _mount(a: argparse.Namespace) -> int:
    """``paramdelta mount``: foreground (until Ctrl-C, SIGTERM or umount) or, by default, in the background."""
    from deltaformat.mount import DEFAULT_CACHE, mount, mount_in_background

    cache_size = a.cache_size or DEFAULT_CACHE
    if a.foreground:
        mount(a.artifacts, a.base, a.mountpoint, alphas=a.alpha, cache_size=cache_size, shard_size=a.shard_size,
              quiet=a.quiet)
        return 0
    argv = [*a.artifacts, "--base", str(a.base), str(a.mountpoint), "--cache-size", str(cache_size),
            "--shard-size", str(a.shard_size), *(["--alpha", *map(str, a.alpha)] if a.alpha else []),
            *(["--quiet"] if a.quiet else [])]
    log = Path(a.log) if a.log else Path(os.environ.get("TMPDIR", "/tmp")) / f"paramdelta-mount-{os.getpid()}.log"
    pid = mount_in_background(argv, a.mountpoint, log)
    print(f"mounted the ParamΔ model at {a.mountpoint} (process {pid}, log {log}); "
          f"unmount with `paramdelta umount {a.mountpoint}`")
    return 0


def _umount(a: argparse.Namespace) -> int:
    from deltaformat.mount import unmount

    unmount(a.mountpoint)
    return 0


def _logout(a: argparse.Namespace) -> int:
    from deltaformat import credentials
    from deltaformat.oci import registry_url

    host = registry_url(a.host).split("://", 1)[1].rstrip("/")
    if not credentials.remove(host):
        print(f"not logged in to {host}", file=sys.stderr)
        return 0
    print(f"removed the credentials for {host} from {credentials.config_path()}")
    return 0


def _search(a: argparse.Namespace) -> int:
    from deltaformat import client

    notice = None
    if a.compatible_with:
        found = client.compatible(a.compatible_with, registry=a.registry, token=a.token, limit=a.limit)
        rows: list[tuple[object, ...]] = [(f"{i.name}:{i.version}", i.match, i.base_id, i.post_id, i.stored_bytes) for i in found.items]
        header: tuple[str, ...] = ("DELTA", "MATCH", "BASE", "POST", "BYTES")
        page: client.Page[Any] = found
    else:
        listed = client.search(a.text, base=a.base, architecture=a.architecture, namespace=a.namespace, sort=a.sort,
                               limit=a.limit, cursor=a.cursor, registry=a.registry, token=a.token,
                               credentials=_credentials(a))
        notice = getattr(listed, "notice", None)  # a stock OCI registry: listed from its catalog and annotations
        rows = [(f"{i.name}:{i.latest_version}", i.base_id, i.post_id or "-", i.stored_bytes,
                 (i.description or "")[:50]) for i in listed.items]
        header = ("DELTA", "BASE", "POST", "BYTES", "DESCRIPTION")
        page = listed
    if notice:
        print(notice, file=sys.stderr)
    if a.json:
        print(page.model_dump_json(indent=2, exclude={"notice"}))
        return 0
    _table([header, *rows])
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def _serve(a: argparse.Namespace) -> int:
    from registry.app import serve

    serve(_registry_settings(a, host=a.host, port=a.port, public_url=a.public_url,
                             anonymous_pull=False if a.no_anonymous_pull else None))
    return 0


def _token_create(a: argparse.Namespace) -> int:
    from registry.auth import create_token
    from registry.db import Database

    if a.scope != "admin" and not a.namespace:
        raise ValueError(f"a {a.scope} token needs a NAMESPACE (or * for every namespace)")
    settings = _registry_settings(a)
    token = create_token(Database(settings.resolved_database_url()), a.namespace or "*", a.scope, a.name)
    print(f"created a {a.scope} token for {'every namespace' if a.scope == 'admin' else a.namespace}; "
          "it is shown once, store it now", file=sys.stderr)
    print(token)
    return 0


def _token_list(a: argparse.Namespace) -> int:
    from registry.auth import list_tokens
    from registry.db import Database

    tokens = list_tokens(Database(_registry_settings(a).resolved_database_url()))
    _table([("ID", "NAME", "SCOPE", "NAMESPACE", "CREATED", "REVOKED"), *(
        (t.id, t.name, t.scope, t.namespace, f"{t.created_at:%Y-%m-%d %H:%M}", f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "")
        for t in tokens)])
    return 0


def _token_revoke(a: argparse.Namespace) -> int:
    from registry.auth import revoke_token
    from registry.db import Database

    if not revoke_token(Database(_registry_settings(a).resolved_database_url()), a.id):
        raise ValueError(f"no live token with id {a.id}")
    print(f"revoked token {a.id}")
    return 0


def _gc(a: argparse.Namespace) -> int:
    from registry.db import Database
    from registry.gc import collect
    from registry.storage import open_store

    settings = _registry_settings(a)
    db, store = Database(settings.resolved_database_url()), open_store(settings)
    try:
        grace = settings.gc_grace_seconds if a.grace is None else a.grace
        report = collect(db, store, grace_seconds=grace, dry_run=a.dry_run, settings=settings)
    finally:
        store.close()
        db.dispose()
    print(json.dumps(report.as_dict(), indent=2) if a.json else report.summary())
    return 0


def _db_upgrade(a: argparse.Namespace) -> int:
    from sqlalchemy import text

    from registry.db import Database

    db = Database(_registry_settings(a).resolved_database_url())  # opening it migrates it to the newest revision
    with db.engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    db.dispose()
    print(f"database schema at revision {revision}")
    return 0


def _registry_settings(a: argparse.Namespace, **extra: object) -> Settings:
    """Server settings: flags given on the command line over PARAMDELTA_* variables over defaults."""
    from registry.settings import Settings

    given = {"data": a.data, "database_url": a.database_url, "blob_store": getattr(a, "blob_store", None), **extra}
    return Settings(**{k: v for k, v in given.items() if v is not None})


def _table(rows: list[tuple[object, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    from deltaformat._version import __version__

    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    with_server = not missing_registry_modules()
    server_note = "" if with_server else f"\n\nto run a registry ({', '.join(SERVER_VERBS)}): {REGISTRY_HINT}"
    p = argparse.ArgumentParser(prog="paramdelta", description="Extract, share and apply ParamΔ delta artifacts.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"exit status:\n{codes}\n\nPARAMDELTA_DEBUG=1 prints a traceback with any error.{server_note}")
    p.add_argument("--version", action="version", version=f"paramdelta {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    x = sub.add_parser("extract", help="base + post -> delta artifact")
    x.add_argument("--base", required=True, help="base model folder or Hub id org/name[@rev]")
    x.add_argument("--post", required=True, help="post-trained model folder or Hub id")
    x.add_argument("--out", required=True, help="artifact folder to write")
    x.add_argument("--name", help="NS/NAME to record in the manifest")
    x.add_argument("--version", dest="version", help="version to record")
    x.add_argument("--description")
    x.add_argument("--license")
    x.add_argument("--lossy", metavar="PRESET", help="approximate Δ with a lossy preset (format v2): "
                   "bf16, q8, q4, q2, sign, lowrank, small; see spec/format-v2.md §8")
    x.add_argument("--format-version", type=int, choices=(1, 2), default=2, help="manifest format to write (default 2)")
    x.set_defaults(func=_extract)

    lora = sub.add_parser("export-lora", help="delta artifact -> PEFT LoRA adapter (rank-R SVD of each Linear weight's Δ)")
    lora.add_argument("artifact", help="artifact folder or registry reference")
    lora.add_argument("--rank", type=int, required=True, help="LoRA rank r")
    lora.add_argument("--out", required=True, help="adapter folder to write")
    lora.set_defaults(func=_export_lora)

    ap = sub.add_parser("apply", help="new base + deltas -> model folder")
    ap.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="artifact folder or registry reference NS/NAME[:VERSION]")
    ap.add_argument("--base", required=True, help="new base model folder or Hub id")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--alpha", type=float, nargs="+", help="scale per artifact (default 1)")
    ap.add_argument("--shard-size", default="5GB", help="maximum shard size (default 5GB)")
    ap.add_argument("--device", default="cpu", help="torch device for the arithmetic (cpu, cuda)")
    ap.add_argument("--require-signature", metavar="PUBLIC_KEY.pem",
                    help="refuse any delta not signed by this key, or changed since (checked before any blob is downloaded)")
    ap.set_defaults(func=_apply)

    v = sub.add_parser("verify", help="check an artifact's integrity (and the round trip with --base)")
    v.add_argument("artifact")
    v.add_argument("--base", help="the original base: prove base + delta == post")
    v.add_argument("--key", metavar="PUBLIC_KEY.pem", help="also prove it signed by this key (paramdelta sign)")
    v.set_defaults(func=_verify)

    sg = sub.add_parser("sign", help="sign an artifact folder or a registry version with an EC private key")
    sg.add_argument("target", metavar="ARTIFACT|REF", help="artifact folder, or registry reference [REGISTRY/]NS/NAME[:VERSION]")
    sg.add_argument("--key", required=True, metavar="PRIVATE_KEY.pem",
                    help="EC private key (P-256/384/521, PEM; an encrypted one's password in $PARAMDELTA_KEY_PASSWORD)")
    sg.set_defaults(func=_sign)

    i = sub.add_parser("inspect", help="summarise an artifact")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_inspect)

    pu = sub.add_parser("push", help="publish an artifact folder to a registry")
    pu.add_argument("artifact", metavar="ARTIFACT_DIR")
    pu.add_argument("reference", metavar="NS/NAME:VERSION", help="where to publish; [REGISTRY/]NS/NAME[:VERSION]")
    pu.set_defaults(func=_push)

    pl = sub.add_parser("pull", help="download a published version into an artifact folder")
    pl.add_argument("reference", metavar="REF", help="[REGISTRY/]NS/NAME[:VERSION|@sha256:DIGEST]")
    pl.add_argument("--out", required=True, help="artifact folder to write")
    pl.set_defaults(func=_pull)

    se = sub.add_parser("search", help="find deltas in a registry")
    se.add_argument("text", nargs="?", help="free text: name, description, base or post model")
    se.add_argument("--base", help="base model id (exact)")
    se.add_argument("--architecture", help="model_type, e.g. llama")
    se.add_argument("--namespace")
    se.add_argument("--sort", default="updated", choices=("updated", "name", "size", "parameters"))
    se.add_argument("--limit", type=int, default=20)
    se.add_argument("--cursor", help="continue a previous listing")
    se.add_argument("--compatible-with", metavar="MODEL", help="versions that fit this model (its id, or its tensor shapes)")
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=_search)

    li = sub.add_parser("login", help="check and store credentials for an OCI registry (docker's config.json)")
    li.add_argument("host", metavar="HOST[:PORT]")
    li.add_argument("-u", "--username")
    li.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    li.set_defaults(func=_login)
    lo = sub.add_parser("logout", help="remove the stored credentials for an OCI registry")
    lo.add_argument("host", metavar="HOST[:PORT]")
    lo.set_defaults(func=_logout)

    # mount, umount (issue #13); the handlers import deltaformat.mount, so building the parser does not
    mt = sub.add_parser("mount", help="serve new base + deltas as a read-only model folder (FUSE), computed on read")
    mt.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="artifact folder or registry reference NS/NAME[:VERSION]")
    mt.add_argument("--base", required=True, help="new base model folder or Hub id")
    mt.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty folder")
    mt.add_argument("--alpha", type=float, nargs="+", help="scale per artifact (default 1)")
    mt.add_argument("--cache-size", help=f"computed chunks kept in memory (default {MOUNT_CACHE_HELP})")
    mt.add_argument("--shard-size", default="5GB", help="shard size of the folder presented, as apply's (default 5GB)")
    mt.add_argument("--foreground", action="store_true", help="serve in this process until Ctrl-C, SIGTERM or umount")
    mt.add_argument("--log", help="the background server's log file (default: a file in $TMPDIR, printed)")
    mt.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    mt.set_defaults(func=_mount)
    um = sub.add_parser("umount", help="unmount a `paramdelta mount` (its process exits)")
    um.add_argument("mountpoint", metavar="MOUNTPOINT")
    um.set_defaults(func=_umount)

    for cmd in (pu, pl, se, sg):
        cmd.add_argument("--registry", help="registry URL (default: $PARAMDELTA_REGISTRY)")
        cmd.add_argument("--token", help="bearer token (default: $PARAMDELTA_TOKEN)")
        cmd.add_argument("-u", "--username", help="log in as this user for this command only (else: `paramdelta login`'s)")
        cmd.add_argument("--password-stdin", action="store_true", help="read the --username's password from stdin")

    for cmd in (x, ap, v, i, pu, pl, lora):
        cmd.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        if cmd in (x, ap, pl, lora):
            cmd.add_argument("--force", action="store_true", help="replace an existing output")
    if with_server:
        _add_server_verbs(sub)
    return p


def _add_server_verbs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """serve, token, gc, db: the registry's administration, run where its data is."""
    sv = sub.add_parser("serve", help="run a registry (SQLite + a blob folder by default)")
    sv.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (default 8000)")
    sv.add_argument("--public-url", help="URL users reach the registry at (for the commands shown on pages)")
    sv.add_argument("--no-anonymous-pull", action="store_true", help="every request needs a token")
    sv.set_defaults(func=_serve)

    tk = sub.add_parser("token", help="manage registry tokens (run where the registry's database is)")
    tks = tk.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    tc = tks.add_parser("create", help="create a token and print it on stdout")
    tc.add_argument("namespace", nargs="?", help="namespace the token acts in (omit for --scope admin)")
    tc.add_argument("--scope", required=True, choices=("pull", "push", "admin"))
    tc.add_argument("--name", help="a label shown in logs and lists (default: scope:namespace)")
    tc.set_defaults(func=_token_create)
    tl = tks.add_parser("list", help="list tokens (never their secrets)")
    tl.set_defaults(func=_token_list)
    tr = tks.add_parser("revoke", help="revoke a token by id")
    tr.add_argument("id", type=int)
    tr.set_defaults(func=_token_revoke)

    gc = sub.add_parser("gc", help="delete untagged manifests and unreferenced blobs; purge stale uploads (admin)")
    gc.add_argument("--dry-run", action="store_true", help="delete nothing; report what would be reclaimed")
    gc.add_argument("--grace", type=int, metavar="SECONDS",
                    help="keep blobs and manifests younger than this (default: $PARAMDELTA_GC_GRACE_SECONDS or 86400)")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.set_defaults(func=_gc)

    db = sub.add_parser("db", help="the registry's metadata database (admin)")
    dbs = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    du = dbs.add_parser("upgrade", help="bring the schema to the newest migration (serve also does this on start)")
    du.set_defaults(func=_db_upgrade)

    for cmd in (sv, tc, tl, tr, gc, du):
        cmd.add_argument("--data", help="registry data folder (default: $PARAMDELTA_DATA or ~/.local/share/paramdelta/registry)")
        cmd.add_argument("--database-url", help="SQLAlchemy URL (default: $PARAMDELTA_DATABASE_URL or SQLite in --data)")
    for cmd in (sv, gc):
        cmd.add_argument("--blob-store", help="blob folder or driver URL (default: $PARAMDELTA_BLOB_STORE or --data/blobs)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((arg for arg in argv if not arg.startswith("-")), None)
    if verb in SERVER_VERBS and (missing := missing_registry_modules()):
        # Said here rather than as argparse's "invalid choice": the verb exists, its extra is not installed.
        print(f"paramdelta: error: '{verb}' runs a registry, which is not installed "
              f"(no {', '.join(missing)}): {REGISTRY_HINT}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    try:
        func: Handler = args.func  # each verb's parser sets it (set_defaults); argparse types it Any
        return func(args)
    except KeyboardInterrupt:
        _debug_traceback()
        print("paramdelta: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # every failure is one line; the traceback only when asked for
        _debug_traceback()
        err = _as_error(exc)
        print(f"paramdelta: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the message
        return err.exit_code if isinstance(err, ParamDeltaError) else (EXIT_USAGE if isinstance(exc, ValueError) else 1)


def _as_error(exc: Exception) -> Exception:
    """The error to show: ours as they are; a file error as ours; anything else named by its type."""
    from pydantic import ValidationError  # here: a command that never loads pydantic starts without it

    if isinstance(exc, ValidationError):  # its own text spans several lines
        return ValueError(f"{exc.title} {invalid_field(exc)}")
    if isinstance(exc, (ParamDeltaError, ValueError)):
        return exc
    if isinstance(exc, OSError):
        return from_os_error(exc)
    return RuntimeError(f"unexpected {type(exc).__name__}: {exc} (PARAMDELTA_DEBUG=1 shows where)")


def _debug_traceback() -> None:
    if environment.debug():
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
