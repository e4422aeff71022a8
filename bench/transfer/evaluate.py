"""Held-out retrieval scores: recall@1 and margin on T, A and A×T."""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.transfer.data import A_TEST_CONTEXTS, ALIAS, NOUNS, Split, active, passive
from bench.transfer.model import Encoder


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
