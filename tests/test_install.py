"""Installs that fit their users (issue #11, item 1), and a CLI that loads only what a verb needs.

``pip install paramdelta`` is the format and the client: no torch, no server stack. The
server's verbs appear with the ``registry`` extra; without it they name the extra to install.
The registry image installs what the Dockerfile says, and serves without torch.

The install tests build fresh virtual environments the way a user does (``python -m venv``,
then ``pip install``, from PyPI or this machine's configured index) from a copy of what the
Dockerfile copies: pip builds in the tree it is given, and the working tree stays as it is.
The CLI checks in this test environment run each verb in a subprocess and read which
modules it loaded.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import deltaformat
from deltaformat import client
from deltaformat.artifact import open_artifact
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.serve import RegistryServer, ServeProcess

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 600  # seconds for one `pip install`: downloads on a shared machine
SERVER_VERBS = ("serve", "token", "gc", "db")
CLIENT_VERBS = ("extract", "apply", "verify", "inspect", "push", "pull", "search")
REGISTRY_HINT = "pip install 'paramdelta[registry]'"
# Distributions a client-only install must not bring (torch: GBs; the rest: the server stack).
NOT_IN_A_CLIENT_INSTALL = {"torch", "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "jinja2", "pydantic-settings"}
# Top-level modules no client verb may load: torch, the server stack, the registry itself.
HEAVY_MODULES = {"torch", "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "jinja2", "pydantic_settings", "registry"}

# Runs one CLI command in-process and writes what it loaded to the file named first.
WRAPPER = """
import json, sys
for name in sys.argv[2].split(","):  # modules to hide, as if they were not installed
    if name:
        sys.modules[name] = None
from deltaformat.cli import main
try:
    code = main(sys.argv[3:])
except SystemExit as exc:  # --help leaves through argparse
    code = exc.code
loaded = sorted(name for name, module in sys.modules.items() if module is not None)
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": loaded}, f)
"""


def _clean_env(tmp: Path) -> dict[str, str]:
    """This environment without paramdelta settings or a path that would let a venv import the working tree."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PARAMDELTA_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return env | {"PARAMDELTA_CACHE": str(tmp / "cache"), "PARAMDELTA_QUIET": "1"}


def _run(cmd: list[str], tmp: Path, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # cwd is a scratch folder: `python -c` puts its cwd on sys.path, and the repository root would shadow the install.
    return subprocess.run(cmd, cwd=tmp, env=env or _clean_env(tmp), capture_output=True, text=True, timeout=timeout)


def _here_env(tmp: Path) -> dict[str, str]:
    """For a run in this environment: this checkout's code first on the path, as in this test process
    (pytest's ``pythonpath``), not whatever checkout the environment has installed (editable or not)."""
    return _clean_env(tmp) | {"PYTHONPATH": str(ROOT)}


def _dockerfile_lines() -> list[str]:
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()


def dockerfile_pip_installs() -> list[list[str]]:
    """The arguments of each `pip install` the Dockerfile runs, in order."""
    installs = []
    for line in _dockerfile_lines():
        if line.startswith("RUN "):
            for command in line.removeprefix("RUN ").split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    installs.append(words[2:])
    return installs


def copy_source_like_the_dockerfile(dest: Path) -> Path:
    """The files the Dockerfile COPYs into its WORKDIR: what an install is built from."""
    dest.mkdir()
    skip = shutil.ignore_patterns("__pycache__")
    for line in _dockerfile_lines():
        if not line.startswith("COPY "):
            continue
        *sources, target = line.split()[1:]
        for source in sources:
            into = dest / target / Path(source).name if len(sources) > 1 or target.endswith("/") else dest / target
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, into, ignore=skip)
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, into)
    return dest


def fresh_venv(root: Path, *pip_installs: list[str]) -> Path:
    """A new virtual environment in root/venv with each pip install run in a copy of the source."""
    source = copy_source_like_the_dockerfile(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    for args in pip_installs:
        cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args]
        done = subprocess.run(cmd, cwd=source, env=_clean_env(root), capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        assert done.returncode == 0, f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}"
    return venv


def installed_distributions(venv: Path, tmp: Path) -> set[str]:
    listing = _run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], tmp)
    assert listing.returncode == 0, listing.stderr
    return {d["name"].lower().replace("_", "-") for d in json.loads(listing.stdout)}


def listed_verbs(help_text: str) -> set[str]:
    """The verbs --help lists: argparse's lines under COMMAND, up to the blank line ending the section."""
    lines = help_text.splitlines()
    section = lines[lines.index("  COMMAND") + 1:]
    section = section[:section.index("")]
    return {line.split()[0] for line in section if line.startswith("    ") and not line.startswith("     ")}


@pytest.fixture(scope="module")
def registry(artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry of this module's own, holding the `delta` artifact (acme/tiny-chat:1.0)."""
    server = RegistryServer(tmp_path_factory.mktemp("install-registry") / "data").start()
    try:
        client.push(artifacts.delta, "acme/tiny-chat:1.0", registry=server.url, token=server.token("acme", "push"), quiet=True)
        yield server
    finally:
        server.stop()


@dataclass
class Run:
    code: int
    modules: set[str]  # every module loaded, and each one's top-level package
    out: str
    err: str


def paramdelta_here(args: list[str], tmp_path: Path, hide: tuple[str, ...] = ()) -> Run:
    """`paramdelta ARGS` in this environment, with the modules in ``hide`` as if not installed."""
    report = tmp_path / "loaded.json"
    done = _run([sys.executable, "-c", WRAPPER, str(report), ",".join(hide), *args], tmp_path, env=_here_env(tmp_path))
    result = json.loads(report.read_text())
    modules = set(result["modules"])
    return Run(result["code"], modules | {name.split(".")[0] for name in modules}, done.stdout, done.stderr)


# --- in this environment (everything installed): each verb loads what it needs ---


def test_help_loads_neither_numpy_nor_pydantic_nor_the_server_stack(tmp_path):
    run = paramdelta_here(["--help"], tmp_path)
    assert run.code == 0
    assert run.modules & (HEAVY_MODULES | {"numpy", "pydantic", "httpx"}) == set(), "--help should start with argparse only"
    assert set(SERVER_VERBS) <= listed_verbs(run.out)  # the registry is installed here
    assert "deltaformat.mount" not in run.modules, "only `paramdelta mount` and `umount` need the FUSE server"


def test_mount_help_states_the_mounts_own_default_cache_size(tmp_path):
    from deltaformat.mount import DEFAULT_CACHE

    run = paramdelta_here(["mount", "--help"], tmp_path)
    assert run.code == 0 and f"(default {DEFAULT_CACHE})" in " ".join(run.out.split())


def test_inspect_loads_neither_numpy_torch_nor_the_server_stack(artifacts, tmp_path):
    run = paramdelta_here(["inspect", str(artifacts.delta)], tmp_path)
    assert run.code == 0, run.err
    assert run.modules & (HEAVY_MODULES | {"numpy"}) == set(), "inspect reads a manifest: no numpy, no codec"


@pytest.mark.parametrize("verb", ["extract", "verify", "apply"])
def test_the_cpu_arithmetic_verbs_load_neither_torch_nor_the_server_stack(verb, artifacts, tmp_path):
    args = {
        "extract": ["extract", "--base", str(artifacts.base), "--post", str(artifacts.post), "--out", str(tmp_path / "delta")],
        "verify": ["verify", str(artifacts.delta), "--base", str(artifacts.base)],
        "apply": ["apply", str(artifacts.delta), "--base", str(artifacts.newbase), "--out", str(tmp_path / "out")],
    }[verb]
    run = paramdelta_here([*args, "-q"], tmp_path)
    assert run.code == 0, run.err
    assert run.modules & HEAVY_MODULES == set()


@pytest.mark.parametrize("verb", ["search", "pull", "push"])
def test_registry_client_verbs_load_neither_numpy_the_arithmetic_nor_the_server_stack(verb, artifacts, registry, tmp_path):
    args = {
        "search": ["search", "tiny", "--json"],
        "pull": ["pull", "acme/tiny-chat:1.0", "--out", str(tmp_path / "pulled")],
        "push": ["push", str(artifacts.other), "acme/tiny-other:1.0", "--token", registry.token("acme", "push")],
    }[verb]
    run = paramdelta_here([*args, "--registry", registry.url], tmp_path)
    assert run.code == 0, run.err
    assert run.modules & (HEAVY_MODULES | {"numpy", "deltaformat.arith", "deltaformat.extract"}) == set(), "manifests, JSON and blobs only"


def test_server_verbs_are_hidden_when_the_registry_extra_is_missing(tmp_path):
    run = paramdelta_here(["--help"], tmp_path, hide=("fastapi",))
    assert run.code == 0
    verbs = listed_verbs(run.out)
    assert set(CLIENT_VERBS) <= verbs and not verbs & set(SERVER_VERBS)
    assert REGISTRY_HINT in run.out


@pytest.mark.parametrize("args", [["serve"], ["token", "create", "acme", "--scope", "push"], ["gc", "--dry-run"], ["db", "upgrade"]])
def test_a_server_verb_without_the_registry_extra_names_it_in_one_line(args, tmp_path):
    run = paramdelta_here([*args, "--data", str(tmp_path / "data")], tmp_path, hide=("sqlalchemy",))
    assert run.code == 2
    assert run.err.count("\n") == 1 and REGISTRY_HINT in run.err and "sqlalchemy" in run.err, run.err
    assert not (tmp_path / "data").exists()


def test_gpu_apply_without_torch_names_the_extra(artifacts, tmp_path):
    out = tmp_path / "out"
    run = paramdelta_here(["apply", str(artifacts.delta), "--base", str(artifacts.newbase), "--out", str(out), "--device", "cuda"],
                          tmp_path, hide=("torch",))
    assert run.code == 2
    assert run.err.count("\n") == 1 and "pip install 'paramdelta[torch]'" in run.err, run.err
    assert not out.exists()


def test_library_gpu_apply_without_torch_names_the_extra(artifacts, tmp_path):
    """The library call, not only the CLI: a ParamDeltaError naming the extra, not a ModuleNotFoundError."""
    out = tmp_path / "out"
    code = (f"import sys; sys.modules['torch'] = None\n"
            f"import deltaformat\n"
            f"from deltaformat.errors import ParamDeltaError\n"
            f"try:\n"
            f"    deltaformat.apply([{str(artifacts.delta)!r}], {str(artifacts.newbase)!r}, {str(out)!r}, device='cuda', quiet=True)\n"
            f"except ParamDeltaError as exc:\n"
            f"    print(exc)\n")
    done = _run([sys.executable, "-c", code], tmp_path, env=_here_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "pip install 'paramdelta[torch]'" in done.stdout, done.stdout
    assert not out.exists()


# --- fresh virtual environments, installed as a user installs ---


@pytest.fixture(scope="module")
def client_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install paramdelta`, no extras: the venv's folder."""
    return fresh_venv(tmp_path_factory.mktemp("client-install"), ["."])


def paramdelta_in(venv: Path, args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return _run([str(venv / "bin" / "paramdelta"), *args], tmp)


def test_a_plain_install_is_the_client_without_torch_or_the_server_stack(client_install, tmp_path):
    assert installed_distributions(client_install, tmp_path) & NOT_IN_A_CLIENT_INSTALL == set()
    loaded = _run([str(client_install / "bin" / "python"), "-c", "import sys, deltaformat; print(*sys.modules)"], tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert {name.split(".")[0] for name in loaded.stdout.split()} & HEAVY_MODULES == set()


def test_a_plain_install_offers_the_client_verbs_and_names_the_extra_for_the_server(client_install, tmp_path):
    shown = paramdelta_in(client_install, ["--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    verbs = listed_verbs(shown.stdout)
    assert set(CLIENT_VERBS) <= verbs and not verbs & set(SERVER_VERBS)
    served = paramdelta_in(client_install, ["serve", "--data", str(tmp_path / "data"), "--port", "1"], tmp_path)
    assert served.returncode == 2
    assert served.stderr.count("\n") == 1 and REGISTRY_HINT in served.stderr, served.stderr
    gpu = paramdelta_in(client_install, ["apply", "x.delta", "--base", "base", "--out", str(tmp_path / "out"), "--device", "cuda"], tmp_path)
    assert gpu.returncode == 2
    assert gpu.stderr.count("\n") == 1 and "pip install 'paramdelta[torch]'" in gpu.stderr, gpu.stderr


def test_a_plain_install_pushes_searches_pulls_and_inspects(client_install, artifacts, registry, tmp_path):
    remote = ["--registry", registry.url]
    token = registry.token("acme", "push")
    pushed = paramdelta_in(client_install, ["push", str(artifacts.delta), "acme/tiny-chat:1.0", "--token", token, "-q", *remote], tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    found = paramdelta_in(client_install, ["search", "tiny", "--json", *remote], tmp_path)
    assert found.returncode == 0, found.stderr
    assert "acme/tiny-chat" in {item["name"] for item in json.loads(found.stdout)["items"]}
    pulled = paramdelta_in(client_install, ["pull", "acme/tiny-chat:1.0", "--out", str(tmp_path / "pulled"), "-q", *remote], tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    shown = paramdelta_in(client_install, ["inspect", str(tmp_path / "pulled"), "--json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["manifest_digest"] == deltaformat.inspect(artifacts.delta)["manifest_digest"]


def test_a_plain_install_extracts_verifies_and_applies_bit_exact(client_install, artifacts, tmp_path):
    delta, out, reference = tmp_path / "delta", tmp_path / "out", tmp_path / "reference"
    extracted = paramdelta_in(client_install, ["extract", "--base", str(artifacts.base), "--post", str(artifacts.post),
                                               "--out", str(delta), "--name", "acme/tiny-chat", "--version", "1.0", "-q"], tmp_path)
    assert extracted.returncode == 0, extracted.stderr
    assert open_artifact(delta).manifest.blob_digests() == open_artifact(artifacts.delta).manifest.blob_digests()
    verified = paramdelta_in(client_install, ["verify", str(delta), "--base", str(artifacts.base), "-q"], tmp_path)
    assert verified.returncode == 0 and "bit for bit" in verified.stdout, verified.stderr
    applied = paramdelta_in(client_install, ["apply", str(delta), "--base", str(artifacts.newbase), "--out", str(out), "-q"], tmp_path)
    assert applied.returncode == 0, applied.stderr
    deltaformat.apply([artifacts.delta], artifacts.newbase, reference, quiet=True)  # this environment's, torch installed
    shards = sorted(f.name for f in reference.glob("*.safetensors*"))
    assert shards and sorted(f.name for f in out.glob("*.safetensors*")) == shards
    for name in shards:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def image_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry image's Python environment: the Dockerfile's pip installs, in order, in a fresh venv."""
    return fresh_venv(tmp_path_factory.mktemp("image-install"), *dockerfile_pip_installs())


class ImageServer(ServeProcess):
    """`paramdelta serve` from the image's environment, ready when /readyz (the image's HEALTHCHECK) answers."""

    probe = "/readyz"

    def __init__(self, venv: Path, data: Path):
        super().__init__("image registry", data.parent / "image-server.log", ("--data", str(data)), _clean_env(data.parent))
        self.venv = venv

    def launch(self):
        cmd = [str(self.venv / "bin" / "paramdelta"), "serve", "--port", str(self.port), *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.log.parent, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        return self


def test_the_registry_image_serves_without_torch_as_a_non_root_user(image_install, tmp_path):
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    assert "torch" not in installed_distributions(image_install, tmp_path)
    assert set(SERVER_VERBS) <= listed_verbs(paramdelta_in(image_install, ["--help"], tmp_path).stdout)
    server = ImageServer(image_install, tmp_path / "data").start()
    try:
        # /v2/ asks a caller without a token for one (a Bearer challenge; docker-style clients need it to send
        # credentials), and answers 200 once it has one: the anonymous pull token the realm hands out.
        challenge = httpx.get(f"{server.url}/v2/", timeout=10)
        assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Bearer realm=")
        anonymous = httpx.get(f"{server.url}/auth/token", timeout=10).json()["token"]
        assert httpx.get(f"{server.url}/v2/", headers={"Authorization": f"Bearer {anonymous}"}, timeout=10).status_code == 200
    finally:
        server.stop()
