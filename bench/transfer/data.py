"""Made-up data for the transfer benchmark: skill A (aliases for nouns), task T (who did what to whom), a wrong task."""

from __future__ import annotations

import random
from dataclasses import dataclass

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
