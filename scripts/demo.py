"""The main job, end to end, on real weights (all-MiniLM-L6-v2) and the embedded registry.

1. base = all-MiniLM-L6-v2; post = base fine-tuned (the "instruct release");
   new base = base trained further on other text (the "updated base").
2. paramdelta extract base + post -> artifact; verify proves the round trip.
3. start a registry (SQLite + local folder), push the artifact, search for it.
4. pull-and-apply it onto the new base; the result loads in transformers.
Everything lands in .demo/ (re-runnable: it starts from scratch each time).

Run from the repository root: python -m scripts.demo (`make demo`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from paramdelta_dev.minilm import NEWS, QA, fine_tune, minilm_folder, resave

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
PORT = int(os.environ.get("PARAMDELTA_DEMO_PORT", "8765"))

def paramdelta(*args: str) -> str:
    """Run the CLI exactly as a user would; fail loudly with its own message."""
    print("$ paramdelta " + " ".join(args), flush=True)
    p = subprocess.run([sys.executable, "-m", "deltaformat.cli", *args], capture_output=True, text=True)
    sys.stderr.write(p.stderr)
    print(p.stdout, end="", flush=True)
    if p.returncode:
        sys.exit(f"demo failed at: paramdelta {' '.join(args)}")
    return p.stdout


def wait_for(url: str, timeout: float = 30) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"registry did not answer at {url}")


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    base = resave(minilm_folder(), DEMO / "minilm-base")
    print("== making the post model and the updated base (short real fine-tunes on CPU)", flush=True)
    post = fine_tune(base, DEMO / "minilm-qa", QA, seed=1)
    newbase = fine_tune(base, DEMO / "minilm-news", NEWS, seed=2, steps=20)

    print("== extract once, and prove the round trip", flush=True)
    art = DEMO / "minilm-qa.delta"
    paramdelta("extract", "--base", str(base), "--post", str(post), "--out", str(art), "--name", "demo/minilm-qa",
               "--version", "1.0", "--description", "Question-answer matching delta for all-MiniLM-L6-v2", "--license", "apache-2.0", "-q")
    paramdelta("inspect", str(art))
    paramdelta("verify", str(art), "--base", str(base), "-q")

    data = DEMO / "registry"
    url = f"http://127.0.0.1:{PORT}"
    print(f"== publish to a registry on {url} (SQLite + local blobs in {data})", flush=True)
    token = paramdelta("token", "create", "demo", "--scope", "push", "--data", str(data)).strip().splitlines()[-1]
    server = subprocess.Popen([sys.executable, "-m", "deltaformat.cli", "serve", "--port", str(PORT), "--data", str(data)],
                              stdout=subprocess.DEVNULL, stderr=open(DEMO / "registry.log", "w"))
    try:
        wait_for(f"{url}/healthz")
        os.environ.update(PARAMDELTA_REGISTRY=url, PARAMDELTA_CACHE=str(DEMO / "cache"))
        paramdelta("push", str(art), "demo/minilm-qa:1.0", "--token", token, "-q")
        paramdelta("search", "MiniLM")
        print("== pull-and-apply onto the updated base", flush=True)
        out = DEMO / "minilm-news-plus-qa"
        paramdelta("apply", "demo/minilm-qa:1.0", "--base", str(newbase), "--out", str(out), "-q")
    finally:
        server.terminate()
        server.wait(10)

    from transformers import AutoModel

    AutoModel.from_pretrained(out)
    print(f"\nThe new model is in {out} and loads in transformers.")
    print(f"Browse the registry: `.venv/bin/paramdelta serve --data {data} --port {PORT}` then open {url}/deltas/demo/minilm-qa")


if __name__ == "__main__":
    main()
