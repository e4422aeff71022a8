"""The ``paramdelta`` command: a thin shell that parses, calls the library, prints.

Every verb is one library call (deltaformat.extract, .apply, ...). Errors are shown
here, once, as one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from deltaformat.errors import ParamDeltaError

Handler = Callable[[argparse.Namespace], int]


def _extract(a: argparse.Namespace) -> int:
    from deltaformat import extract

    m = extract(a.base, a.post, a.out, name=a.name, version=a.version, description=a.description,
                license=a.license, force=a.force, quiet=a.quiet)
    s = m.summary()
    print(f"wrote {a.out}: {s['tensors']} tensors {s['kinds']}, {s['stored_bytes']:,} bytes "
          f"({s['bytes_per_parameter']:.3f} B/param), {s['patched_elements']} patched elements")
    return 0


def _apply(a: argparse.Namespace) -> int:
    from deltaformat import apply

    r = apply(a.artifacts, a.base, a.out, alphas=a.alpha, shard_size=a.shard_size, force=a.force, quiet=a.quiet, device=a.device)
    for key, (base, post, new) in r.config_changes.items():
        print(f"config {key}: base={base!r} post={post!r} new base={new!r}", file=sys.stderr)
    exact = " (verified bit-exact against the post model)" if r.verified_exact else ""
    print(f"wrote {r.out}: {r.tensors} tensors, {r.parameters:,} parameters{exact}")
    return 0


def _verify(a: argparse.Namespace) -> int:
    from deltaformat import verify

    r = verify(a.artifact, base=a.base, quiet=a.quiet)
    proof = "; round trip on the base reproduces the post model bit for bit" if r.round_trip else ""
    print(f"ok: {r.artifact}: {r.blobs} blobs, {r.stored_bytes:,} bytes intact{proof}")
    return 0


def _inspect(a: argparse.Namespace) -> int:
    from deltaformat import inspect

    info = inspect(a.artifact)
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name'] or '(unnamed)'}:{info['version'] or '-'}  manifest {info['manifest_digest']}")
    for side in ("base", "post"):
        ref = info[side]
        rev = f"@{ref['commit'] or ref['revision']}" if (ref["commit"] or ref["revision"]) else ""
        print(f"  {side}: {ref['id']}{rev}  {ref['num_parameters']:,} params  {ref['fingerprint'][:19]}…")
    bpp = info["bytes_per_parameter"]
    print(f"  tensors: {info['tensors']} {info['kinds']}  stored {info['stored_bytes']:,} bytes"
          + (f" ({bpp:.3f} B/param)" if bpp is not None else ""))
    print(f"  codec: {info['codec']}  files: {', '.join(info['files']) or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from deltaformat._version import __version__

    p = argparse.ArgumentParser(prog="paramdelta", description="Extract, share and apply ParamΔ delta artifacts.")
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
    x.set_defaults(func=_extract)

    ap = sub.add_parser("apply", help="new base + deltas -> model folder")
    ap.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="artifact folder or registry reference NS/NAME[:VERSION]")
    ap.add_argument("--base", required=True, help="new base model folder or Hub id")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--alpha", type=float, nargs="+", help="scale per artifact (default 1)")
    ap.add_argument("--shard-size", default="5GB", help="maximum shard size (default 5GB)")
    ap.add_argument("--device", default="cpu", help="torch device for the arithmetic (cpu, cuda)")
    ap.set_defaults(func=_apply)

    v = sub.add_parser("verify", help="check an artifact's integrity (and the round trip with --base)")
    v.add_argument("artifact")
    v.add_argument("--base", help="the original base: prove base + delta == post")
    v.set_defaults(func=_verify)

    i = sub.add_parser("inspect", help="summarise an artifact")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_inspect)

    for cmd in (x, ap, v, i):
        cmd.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        if cmd in (x, ap):
            cmd.add_argument("--force", action="store_true", help="replace an existing output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ParamDeltaError as exc:
        print(f"paramdelta: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"paramdelta: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paramdelta: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
