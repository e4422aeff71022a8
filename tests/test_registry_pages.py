"""The browse pages in headless Chromium against a real registry process: search, open a
delta, copy its apply command and run it; a screenshot of the delta page is kept.

Set PARAMDELTA_SCREENSHOTS=DIR to keep the screenshot outside pytest's temporary folder.
"""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deltaformat import client
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.serve import RegistryServer
from paramdelta_dev.services import CHROMIUM_HEADLESS_ARGS, require_chromium
from paramdelta_dev.tiny_models import load_state

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("client_env")]


class Browser:
    """Headless Chromium, one process per page (rendered DOM after scripts ran, or a screenshot)."""

    def __init__(self, profile: Path):
        self.binary = require_chromium()
        self.args = [*CHROMIUM_HEADLESS_ARGS, f"--user-data-dir={profile}", "--window-size=1280,1600"]

    def dom(self, url: str) -> str:
        return self._run("--dump-dom", url).stdout

    def screenshot(self, url: str, path: Path) -> Path:
        self._run(f"--screenshot={path}", url)
        return path

    def _run(self, action: str, url: str) -> subprocess.CompletedProcess:
        done = subprocess.run([self.binary, *self.args, action, url], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done


def element_text(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</', dom, re.S)
    assert m, f"no element #{element_id} on the page"
    return html.unescape(m.group(1)).strip()


def test_browse_search_open_and_run_the_apply_command_shown(registry_server: RegistryServer, artifacts: Artifacts,
                                                            tmp_path: Path, client_env: Path):
    srv = registry_server
    client.push(artifacts.delta, f"{srv.host}/acme/tiny-chat:1.0", token=srv.token("acme", "push"))
    browser = Browser(tmp_path / "profile")

    listing = browser.dom(f"{srv.url}/?q=tiny+chat")
    assert 'href="/deltas/acme/tiny-chat"' in listing and "Tiny chat delta for tests" in listing
    assert 'id="empty"' in browser.dom(f"{srv.url}/?q=no-such-delta")

    page = browser.dom(f"{srv.url}/deltas/acme/tiny-chat")
    assert element_text(page, "name").startswith("acme/tiny-chat")
    assert "Tiny chat delta for tests" in element_text(page, "description")
    assert 'id="versions"' in page and 'id="tensors"' in page and "model.embed_tokens.weight" in page
    pull = element_text(page, "pull-cmd")
    apply = element_text(page, "apply-cmd")
    assert pull == f"paramdelta pull {srv.host}/acme/tiny-chat:1.0 --out tiny-chat-1.0.delta"
    # As a shell reads what is pasted: one argument each, nothing else run.
    assert shlex.split(pull) == ["paramdelta", "pull", f"{srv.host}/acme/tiny-chat:1.0", "--out", "tiny-chat-1.0.delta"]
    hostile = browser.dom(f"{srv.url}/deltas/acme/tiny-chat?version=2%3Btouch%24%7BIFS%7DX%3B%23")
    assert 'id="pull-cmd"' not in hostile and "neither a digest nor a tag" in element_text(hostile, "error")

    # What a user copies from the page, run as it stands (their base and output folder filled in).
    argv = shlex.split(apply.replace("NEW_BASE", shlex.quote(str(artifacts.base))))
    argv[argv.index("--out") + 1] = str(tmp_path / "model")
    done = subprocess.run([sys.executable, "-m", "deltaformat.cli", *argv[1:], "-q"], capture_output=True, text=True,
                          env={**os.environ, "PARAMDELTA_CACHE": str(client_env)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "verified bit-exact" in done.stdout
    out, post = load_state(tmp_path / "model"), load_state(artifacts.post)
    assert out.keys() == post.keys() and all(torch.equal(out[k].view(torch.uint8), post[k].view(torch.uint8)) for k in out)

    shot = browser.screenshot(f"{srv.url}/deltas/acme/tiny-chat", tmp_path / "delta-page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if keep := os.environ.get("PARAMDELTA_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
