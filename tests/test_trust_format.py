"""A hostile delta can do no harm (issue #10, format and client side).

Each test builds the hostile input the issue describes (a real artifact, rewritten) and
checks the user-visible outcome: a one-line error naming what is wrong, nothing written,
and, where it succeeds, an output whose record covers every file in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import zstandard

import deltaformat
from deltaformat import client
from deltaformat.apply import PROVENANCE_FILE
from deltaformat.artifact import DIGEST_FILE, MANIFEST_FILE, open_artifact
from deltaformat.codec import get_codec
from deltaformat.digests import blob_digest, hex_of
from deltaformat.errors import FormatError, IdentityError, ModelError, NoSpaceError, RegistryError
from deltaformat.fsutil import TEMP_MARK, atomic_folder
from deltaformat.manifest import CHUNK_ELEMENTS, MAX_MANIFEST_BYTES, parse_manifest
from deltaformat.oci import build_oci_manifest, parse_oci_manifest, sha256_digest

PARAMDELTA = [sys.executable, "-m", "deltaformat.cli"]


# -- crafting hostile artifacts -----------------------------------------------------------


def hostile(src: Path, dest: Path, edit: Callable[[dict, Callable[[bytes], dict]], None]) -> Path:
    """A copy of artifact ``src`` whose manifest ``edit`` rewrote; ``edit`` gets ``add_blob(bytes) -> {digest, size}``.

    The manifest digest file is rewritten to match: the artifact is self-consistent, as
    an attacker would make it, so only the rules about its content can stop it.
    """
    shutil.copytree(src, dest)
    blobs = dest / "blobs" / "sha256"

    added: set[str] = set()

    def add_blob(data: bytes) -> dict:
        (blobs / hex_of(blob_digest(data))).write_bytes(data)
        added.add(blob_digest(data))
        return {"digest": blob_digest(data), "size": len(data)}

    raw = json.loads((dest / MANIFEST_FILE).read_bytes())
    edit(raw, add_blob)
    if raw.get("format_version") == 2:  # format v2 stores carried files as zstd frames: the attacker's too
        for f in raw.get("files", []):
            if f["digest"] in added:  # (and its streams have no digest)
                data = (blobs / hex_of(f["digest"])).read_bytes()
                f.update(add_blob(zstandard.ZstdCompressor(write_content_size=True).compress(data)),
                         encoding="zstd", content_size=len(data))
        for t in raw["tensors"]:
            for key in ("delta", "values"):
                if t.get(key):
                    t[key].pop("digest", None)
    write_manifest(dest, json.dumps(raw).encode())
    return dest


def write_manifest(folder: Path, data: bytes) -> None:
    (folder / MANIFEST_FILE).write_bytes(data)
    (folder / DIGEST_FILE).write_text(blob_digest(data) + "\n")


def carry(path: str, data: bytes) -> Callable[[dict, Callable], None]:
    def edit(raw: dict, add_blob: Callable[[bytes], dict]) -> None:
        raw["files"].append({"path": path, **add_blob(data)})
    return edit


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PARAMDELTA, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PARAMDELTA_DEBUG": "", **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("paramdelta: error:") and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def nothing_beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- item 3: carried files --------------------------------------------------------------

FORBIDDEN_PATHS = ["model.safetensors", "config.json", "modeling_evil.py", ".", "a//b", ".hidden", "tokenizer.json/.",
                   "model.safetensors.index.json", "paramdelta.json", "pytorch_model.bin", "additional_chat_templates/x.py",
                   "additional_chat_templates/.x.jinja", "additional_chat_templates/a/b.jinja"]


@pytest.mark.parametrize("path", FORBIDDEN_PATHS)
def test_manifest_refuses_carried_files_outside_the_allow_list(artifacts, path):
    raw = json.loads((artifacts.delta / MANIFEST_FILE).read_bytes())
    raw["files"].append({"path": path, "digest": "sha256:" + "0" * 64, "size": 1})
    with pytest.raises(FormatError, match=r"manifest field files\.\d+\.path"):
        parse_manifest(json.dumps(raw).encode())


def test_hostile_carried_weights_are_refused_by_verify_apply_and_cli(artifacts, tmp_path):
    """The attack observed on main: a carried model.safetensors replaced the verified weights."""
    art = hostile(artifacts.delta, tmp_path / "evil", carry("model.safetensors", b"not the weights"))
    with pytest.raises(FormatError, match="model.safetensors"):
        deltaformat.verify(art, base=artifacts.base, quiet=True)
    with pytest.raises(FormatError, match="model.safetensors"):
        deltaformat.apply([art], artifacts.base, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    proc = run_cli("apply", art, "--base", artifacts.base, "--out", tmp_path / "out", "-q")
    assert_one_line_error(proc, 3, "model.safetensors")
    assert nothing_beside(tmp_path) == ["evil"]


def test_carried_settings_that_name_code_are_refused(artifacts, tmp_path):
    """tokenizer_config.json with auto_map makes transformers import code from elsewhere: refused at verify and apply."""
    cfg = json.loads((artifacts.post / "tokenizer_config.json").read_bytes())
    cfg["auto_map"] = {"AutoTokenizer": ["evil/repo--tok.Evil", None]}

    def swap(raw: dict, add_blob: Callable[[bytes], dict]) -> None:
        entry = next(f for f in raw["files"] if f["path"] == "tokenizer_config.json")
        entry.update(add_blob(json.dumps(cfg).encode()))

    art = hostile(artifacts.delta, tmp_path / "evil", swap)
    with pytest.raises(FormatError, match="auto_map"):
        deltaformat.verify(art, quiet=True)
    with pytest.raises(FormatError, match="auto_map"):
        deltaformat.apply([art], artifacts.base, tmp_path / "out", quiet=True)
    assert nothing_beside(tmp_path) == ["evil"]


def test_extract_refuses_a_post_model_whose_side_files_name_code(artifacts, tmp_path):
    post = tmp_path / "post"
    shutil.copytree(artifacts.post, post)
    cfg = json.loads((post / "tokenizer_config.json").read_bytes())
    (post / "tokenizer_config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoTokenizer": ["x.Y", None]}}))
    with pytest.raises(ModelError, match="auto_map"):
        deltaformat.extract(artifacts.base, post, tmp_path / "a", quiet=True)
    assert nothing_beside(tmp_path) == ["post"]


def carry_instead(path: str, data: bytes) -> Callable[[dict, Callable], None]:
    """Replace the carried file ``path`` with ``data`` (add it when the artifact has none)."""
    def edit(raw: dict, add_blob: Callable[[bytes], dict]) -> None:
        raw["files"] = [f for f in raw["files"] if f["path"] != path] + [{"path": path, **add_blob(data)}]
    return edit


@pytest.mark.parametrize("edit, words", [
    (carry("model.safetensors", b"not the weights"), "model.safetensors"),
    (carry_instead("tokenizer_config.json", b'{"auto_map": {"AutoTokenizer": ["evil/repo--tok.Evil", null]}}'), "auto_map"),
], ids=["carried-weights", "settings-naming-code"])
def test_registry_refuses_a_push_of_a_hostile_manifest(registry_server, artifacts, tmp_path, client_env, edit, words):
    """The registry validates pushed manifests with the same models (a carried weight file), and reads carried
    settings files to refuse one that names code to import (auto_map): refused at push, not only at apply."""
    art = hostile(artifacts.delta, tmp_path / "evil", edit)
    data = (art / MANIFEST_FILE).read_bytes()
    raw = json.loads(data)
    layers = [{"mediaType": "application/vnd.paramdelta.file.v1", "digest": f["digest"], "size": f["size"]} for f in raw["files"]]
    layers += [{"mediaType": "application/vnd.paramdelta.chunk.v1", "digest": c["digest"], "size": c["size"]}
               for t in raw["tensors"] for s in (t["delta"], t["values"]) if s for c in s["chunks"]]
    layers += [{"mediaType": "application/vnd.paramdelta.patch.v1", **{k: t["patch"][k] for k in ("digest", "size")}}
               for t in raw["tensors"] if t["patch"]]
    oci = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "artifactType": "application/vnd.paramdelta.delta.v1",
                      "config": {"mediaType": "application/vnd.paramdelta.manifest.v1+json", "digest": blob_digest(data), "size": len(data)},
                      "layers": list({d["digest"]: d for d in layers}.values())}).encode()
    name = "acme/tiny-chat"
    with client.RegistryClient(registry_server.url, registry_server.token("acme", "push")) as rc:
        rc.upload_blob(name, blob_digest(data), len(data), art / MANIFEST_FILE)
        for layer in json.loads(oci)["layers"]:
            rc.upload_blob(name, layer["digest"], layer["size"], art / "blobs" / "sha256" / hex_of(layer["digest"]))
        with pytest.raises(RegistryError, match=words):
            rc.put_manifest(name, "1.0", oci)  # name and version match: only the carried file is wrong


def test_apply_records_every_output_file_and_nothing_else_is_there(artifacts, tmp_path):
    out = tmp_path / "model"
    result = deltaformat.apply([artifacts.delta], artifacts.base, out, quiet=True)
    record = json.loads((out / PROVENANCE_FILE).read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {PROVENANCE_FILE}
    assert set(record["files"]) == on_disk
    for rel, entry in record["files"].items():
        data = (out / rel).read_bytes()
        assert entry == {"sha256": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}, rel
    assert record["verified_exact"] is result.verified_exact is True
    assert {"config.json", "tokenizer.json"} <= on_disk and any(n.endswith(".safetensors") for n in on_disk)
    assert not (out / TEMP_MARK).exists()


def test_shard_hashes_are_right_when_written_out_of_order(tmp_path):
    """The writer's running hash is only a shortcut: out-of-order writes are hashed from the file."""
    from deltaformat.writer import ShardedWriter

    w = ShardedWriter(tmp_path, [("a", "F32", [4]), ("b", "F32", [4])], 1 << 20)
    w.write("b", 0, np.arange(4, dtype=np.uint32))
    w.write("a", 0, np.arange(4, dtype=np.uint32))
    w.close()
    data = (tmp_path / "model.safetensors").read_bytes()
    assert w.digests["model.safetensors"] == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))


# -- item 4: manifest-level bombs -------------------------------------------------------


def _first(raw: dict, kind: str) -> dict:
    return next(t for t in raw["tensors"] if t["kind"] == kind)


def _edit(artifacts, fn: Callable[[dict], None]) -> bytes:
    raw = json.loads((artifacts.delta / MANIFEST_FILE).read_bytes())
    fn(raw)
    return json.dumps(raw).encode()


@pytest.mark.parametrize("what, fn, words", [
    ("patch count over the tensor", lambda r: _first(r, "changed").update(
        patch={"digest": "sha256:" + "1" * 64, "size": 49000, "count": 1 << 30}), "patch of 1073741824 elements"),
    ("stream numel over the shape", lambda r: _first(r, "changed")["delta"].update(numel=1 << 28, chunks=[
        {"digest": "sha256:" + "2" * 64, "size": 32000}] * 64), "its shapes imply"),
    ("chunk size not v1's", lambda r: _first(r, "changed")["delta"].update(chunk_elements=1 << 30), "chunk_elements"),
    ("manifest chunk size", lambda r: r.update(chunk_elements=1 << 30), "chunk_elements"),
    ("blob larger than the cap", lambda r: _first(r, "changed")["delta"]["chunks"][0].update(size=1 << 40), "size"),
])
def test_sizes_that_drive_allocations_are_tied_to_shapes(artifacts, what, fn, words):
    with pytest.raises(FormatError, match=words):
        parse_manifest(_edit(artifacts, fn))


def test_shape_overflow_is_a_one_line_error_in_apply(artifacts, tmp_path):
    """[2**64, 0] has 0 elements, passed the old element-count limit, and crashed apply with OverflowError."""
    def edit(raw: dict, _add) -> None:
        t = _first(raw, "changed")
        raw["tensors"].append({"name": "evil.weight", "kind": "added", "post": {**t["post"], "shape": [2 ** 64, 0]},
                               "values": {**t["delta"], "dtype": t["post"]["dtype"], "numel": 0, "chunks": []}})

    art = hostile(artifacts.delta, tmp_path / "evil", edit)
    assert_one_line_error(run_cli("apply", art, "--base", artifacts.base, "--out", tmp_path / "out", "-q"), 3, "shape")
    assert nothing_beside(tmp_path) == ["evil"]


def test_a_model_with_an_int64_overflowing_shape_is_a_model_error(tmp_path):
    """The same shape in a model's safetensors header: refused by name (the old extract wrote it
    into an artifact, and apply then failed with an OverflowError)."""
    folder = tmp_path / "m"
    folder.mkdir()
    header = json.dumps({"t": {"dtype": "F32", "shape": [2 ** 64, 0], "data_offsets": [0, 0]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    assert_one_line_error(run_cli("extract", "--base", folder, "--post", folder, "--out", tmp_path / "a", "-q"),
                          ModelError.exit_code, "tensor 't' has shape")
    assert not (tmp_path / "a").exists()


def test_a_blob_smaller_than_the_manifest_says_is_refused_before_reading(artifacts, tmp_path):
    """The recorded size is checked against the file first: a 1 GiB claim allocates nothing."""
    def edit(raw: dict, _add) -> None:
        _first(raw, "changed")["delta"]["chunks"][0]["size"] = 1 << 30

    art = open_artifact(hostile(artifacts.delta, tmp_path / "evil", edit))
    t = next(t for t in art.manifest.tensors if t.kind == "changed")
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="manifest says 1073741824"):
            art.decode_chunk(t.delta, 0, "x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_one_blob_named_by_many_chunks_is_bounded_by_the_announced_shape(artifacts, tmp_path):
    """64 chunks naming one small blob are legal (identical chunks), but the output is the
    shape's size, announced, and checked against the free space before anything is written."""
    zeros = get_codec("bytegroup-zstd").encode(np.zeros(CHUNK_ELEMENTS, dtype=np.uint32))
    assert len(zeros) < 4096

    def edit(raw: dict, add_blob: Callable[[bytes], dict]) -> None:
        chunk = add_blob(zeros)
        numel = 64 * CHUNK_ELEMENTS
        raw["tensors"].append({"name": "evil.weight", "kind": "added",
                               "post": {"shape": [numel], "dtype": "F32", "digest": "sha256:" + "3" * 64},
                               "values": {"codec": "bytegroup-zstd", "dtype": "F32", "numel": numel,
                                          "chunk_elements": CHUNK_ELEMENTS, "chunks": [chunk] * 64,
                                          "digest": "sha256:" + "4" * 64}})

    art = hostile(artifacts.delta, tmp_path / "evil", edit)
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    try:
        proc = run_cli("apply", art, "--base", artifacts.base, "--out", disk / "out")
        announced = re.search(r"apply: writing \d+ tensors, ([\d,]+) bytes", proc.stderr)
        assert announced and int(announced[1].replace(",", "")) > 64 * CHUNK_ELEMENTS * 4  # the shapes' size, evil tensor included
        assert proc.returncode == NoSpaceError.exit_code, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("paramdelta: error: not enough space") and "bytes" in last and "free" in last
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- item 8: unclean failures ---------------------------------------------------------------


def test_deeply_nested_manifest_is_a_format_error_everywhere(artifacts, tmp_path):
    deep = b'{"format_version": 1, "annotations": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(FormatError, match="manifest.json is not valid JSON"):
        parse_manifest(deep)
    with pytest.raises(FormatError):
        parse_oci_manifest(b'{"schemaVersion": 2, "config": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    art = tmp_path / "deep"
    shutil.copytree(artifacts.delta, art)
    write_manifest(art, deep)
    assert_one_line_error(run_cli("inspect", art), FormatError.exit_code, "not valid JSON")


def test_errors_have_their_class_exit_code_and_a_traceback_only_on_request(artifacts, tmp_path):
    (tmp_path / "out").mkdir()
    args = ("apply", artifacts.delta, "--base", artifacts.base, "--out", tmp_path / "out", "-q")
    assert_one_line_error(run_cli(*args), 8, "--force")
    debug = run_cli(*args, env={"PARAMDELTA_DEBUG": "1"})
    assert debug.returncode == 8 and "Traceback" in debug.stderr and "OutputExistsError" in debug.stderr
    assert "exit status:" in run_cli("--help").stdout


# -- item 7: identity of what a registry serves --------------------------------------------


class HostileRegistry:
    """A registry that is not ours: it serves one artifact under whatever name and tag is asked."""

    def __init__(self, artifact: Path, *, endless: bool = False):
        data = (artifact / MANIFEST_FILE).read_bytes()
        manifest = parse_manifest(data)
        oci = build_oci_manifest(manifest, data)
        self.content = {sha256_digest(data): data, sha256_digest(oci): oci}
        for d in manifest.blob_digests():
            self.content[d] = (artifact / "blobs" / "sha256" / hex_of(d)).read_bytes()
        routes = {"manifests": oci, "manifest": data}
        content = self.content

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if endless:  # a body "without end": whitespace (valid JSON padding), 3x the cap (so a client without one fails, not hangs)
                    self.send_response(200)
                    self.end_headers()
                    with contextlib.suppress(OSError):
                        for _ in range(3 * MAX_MANIFEST_BYTES >> 20):
                            self.wfile.write(b" " * (1 << 20))
                    return
                tail = self.path.rstrip("/").rsplit("/", 2)
                body = content.get(tail[-1]) if tail[-2] == "blobs" else routes.get(tail[-1]) or routes.get(tail[-2])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HostileRegistry:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile_registry(artifacts) -> Iterator[HostileRegistry]:
    with HostileRegistry(artifacts.delta) as reg:  # serves acme/tiny-chat version 1.0
        yield reg


@pytest.mark.parametrize("ref, words", [("evil/other:1.0", "names acme/tiny-chat, not evil/other"),
                                        ("acme/tiny-chat:2.0", "version 1.0, not 2.0")])
def test_pull_and_apply_refuse_a_manifest_that_is_not_the_one_asked_for(hostile_registry, artifacts, tmp_path, client_env, ref, words):
    full = f"{hostile_registry.host}/{ref}"
    with pytest.raises(IdentityError, match=words):
        client.pull(full, tmp_path / "pulled", quiet=True)
    assert [p.name for p in (client_env / "blobs" / "sha256").iterdir()] == [hex_of(blob_digest(
        (artifacts.delta / MANIFEST_FILE).read_bytes()))]  # refused on manifest.json, before any layer came down
    with pytest.raises(IdentityError, match=words):
        deltaformat.apply([full], artifacts.base, tmp_path / "out", quiet=True)
    assert_one_line_error(run_cli("apply", full, "--base", artifacts.base, "--out", tmp_path / "out", "-q",
                                  env={"PARAMDELTA_CACHE": str(client_env)}), IdentityError.exit_code, words)
    assert not (tmp_path / "pulled").exists() and not (tmp_path / "out").exists()


def test_a_pulled_artifact_reports_the_reference_it_came_from(hostile_registry, artifacts, tmp_path, client_env):
    ref = f"{hostile_registry.host}/acme/tiny-chat:1.0"
    pulled = client.pull(ref, tmp_path / "pulled", quiet=True)
    pinned = f"{ref}@{sha256_digest(build_oci_manifest(pulled.artifact.manifest, pulled.artifact.manifest_bytes))}"
    assert open_artifact(tmp_path / "pulled").source == pinned
    shown = run_cli("inspect", tmp_path / "pulled")
    assert f"pulled from: {pinned}" in shown.stdout
    deltaformat.apply([tmp_path / "pulled"], artifacts.base, tmp_path / "a", quiet=True)
    deltaformat.apply([ref], artifacts.base, tmp_path / "b", quiet=True)
    for out in ("a", "b"):
        assert json.loads((tmp_path / out / PROVENANCE_FILE).read_text())["deltas"][0]["source"] == pinned


def test_a_manifest_without_end_is_refused_at_the_cap(artifacts, tmp_path, client_env):
    with HostileRegistry(artifacts.delta, endless=True) as reg:
        tracemalloc.start()
        try:
            with pytest.raises(FormatError, match=f"more than {MAX_MANIFEST_BYTES:,} bytes"):
                client.pull(f"{reg.host}/acme/tiny-chat:1.0", tmp_path / "pulled", quiet=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 * MAX_MANIFEST_BYTES and not (tmp_path / "pulled").exists()


# -- item 9: filesystem hygiene ---------------------------------------------------------


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json"])
def test_extract_refuses_symlinked_side_files(artifacts, tmp_path, name):
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    post = tmp_path / "post"
    shutil.copytree(artifacts.post, post)
    (post / name).unlink()
    (post / name).symlink_to(secret)
    with pytest.raises(ModelError, match=f"{name}: is a symbolic link"):
        deltaformat.extract(artifacts.base, post, tmp_path / "a", quiet=True)
    assert not (tmp_path / "a").exists()


def test_extract_refuses_a_fifo_among_side_files(artifacts, tmp_path):
    post = tmp_path / "post"
    shutil.copytree(artifacts.post, post)
    os.mkfifo(post / "vocab.txt")  # reading it would block forever
    with pytest.raises(ModelError, match="vocab.txt: is not a regular file"):
        deltaformat.extract(artifacts.base, post, tmp_path / "a", quiet=True)


def test_push_refuses_a_blob_that_is_a_symlink(artifacts, tmp_path, registry_server, client_env):
    """An artifact folder from elsewhere whose blob links to a secret: nothing is sent."""
    art = tmp_path / "art"
    shutil.copytree(artifacts.delta, art)
    victim = next(p for p in (art / "blobs" / "sha256").iterdir())
    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"-----BEGIN SECRET-----" + b"x" * (victim.stat().st_size - 22))
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(FormatError, match="not a regular file"):
        client.push(art, f"{registry_server.host}/acme/tiny-chat:1.0-link", token=registry_server.token("acme", "push"), quiet=True)


def _abandoned(parent: Path, name: str) -> Path:
    """A temporary folder as a killed run leaves it: marked as ours, data inside, no lock held."""
    tmp = parent / f".{name}.tmp-0123abcd"
    tmp.mkdir()
    (tmp / TEMP_MARK).write_text("pid 1\n")
    (tmp / "model.safetensors").write_bytes(b"\0" * 1000)
    return tmp


def test_the_next_run_removes_abandoned_temporary_folders_only(artifacts, tmp_path):
    dead = _abandoned(tmp_path, "out")
    other_name = _abandoned(tmp_path, "elsewhere")  # another output's, in the same parent: also dead
    not_ours = tmp_path / ".x.tmp-89abcdef"
    not_ours.mkdir()  # named like ours but without our mark: someone else's
    alive = _abandoned(tmp_path, "busy")
    fd = os.open(alive, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a run still building it
    try:
        deltaformat.apply([artifacts.delta], artifacts.base, tmp_path / "out", quiet=True)
        assert not dead.exists() and not other_name.exists()
        assert not_ours.exists() and alive.exists()
    finally:
        os.close(fd)
    with atomic_folder(tmp_path / "again"):
        pass
    assert not alive.exists()  # its lock is free now
    assert sorted(nothing_beside(tmp_path)) == sorted([".x.tmp-89abcdef", "again", "out"])
