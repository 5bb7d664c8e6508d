#!/usr/bin/env python3
"""Build the Temporal Awareness (explicit) CAA-style dataset and the seed patching pairs.

Deterministic (seeded); re-run with:
    python3 tools/make_dataset.py

Writes
  data/raw/temporal_scope_caa.json                     ~480 CAA items (train/heldout split)
  data/temporal_scope_for_attribution_patching.json    the 2 seed clean/corrupted pairs

Goals are composed from curated word lists (short activities + short time phrases, long
ambitions + long time phrases) plus small compositional families of natural standalone goals
("make one cup of cappuccino", "become a future president"), so held-out goals recombine words
that occur in training.  The long-term choice is always the matching behaviour.

data/temporal_scope_pairs.json needs the tokenizer (token-aligned pairs) and is written by
tools/train_tiny_model.py.
"""
import json
import os
import random

SEED = 1234
N_PER_HORIZON = 240          # 480 items in total
HELDOUT_FRACTION = 0.175
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEMPLATE = "The goal is to {goal}. Is this a short-term or long-term goal? The answer is:"

SEED_PAIRS = [
    ("make one cup of cappuccino", "become a future president"),
    ("water the plants in the next hour", "become a doctor over the next decade"),
]

# ---------------------------------------------------------------- short-term building blocks
SHORT_ACTIVITIES = [
    "wash the dishes", "water the plants", "tie my shoes", "answer an email",
    "take out the trash", "brush my teeth", "fold the laundry", "buy some milk",
    "call my mother", "read one short article", "boil an egg", "walk the dog",
    "make a sandwich", "sweep the kitchen floor", "send a text message", "pay the electric bill",
    "charge my phone", "fill up the car with gas", "iron a shirt", "pick up the mail",
    "feed the cat", "take a quick shower", "order a pizza", "finish this crossword",
    "print the boarding pass", "pack a lunch", "make the bed", "check the weather",
    "clean the windows", "return a library book", "book a haircut", "stretch before a run",
    "bake a batch of cookies", "vacuum the living room", "change a light bulb",
    "write a grocery list", "wrap a birthday present", "empty the dishwasher",
    "buy a train ticket", "eat a quick snack", "warm up some soup", "drink a glass of water",
    "set an alarm", "mop the hallway", "water the garden",
]
SHORT_TIMES = [
    "this afternoon", "right now", "in the next ten minutes", "before lunch", "tonight",
    "this morning", "before dinner", "in the next hour", "today", "before bedtime",
    "in five minutes", "after breakfast", "this evening", "before the meeting starts",
    "during the lunch break", "within the hour",
]
SHORT_DRINKS = [
    "cappuccino", "espresso", "green tea", "hot chocolate", "coffee", "lemonade",
    "herbal tea", "latte", "mocha", "black tea", "iced coffee", "orange juice",
]
SHORT_SNACKS = [
    "apple", "banana", "cookie", "slice of toast", "bowl of cereal", "cup of yogurt",
    "granola bar", "slice of pizza", "muffin", "bagel", "orange", "sandwich",
]

# ---------------------------------------------------------------- long-term building blocks
LONG_AMBITIONS = [
    "become a doctor", "earn a university degree", "learn to speak fluent Japanese",
    "build a successful company", "write a series of novels", "buy a house",
    "pay off the mortgage", "become a concert pianist", "save for retirement",
    "raise a family", "master the violin", "become a professor", "run for the senate",
    "found a charity", "restore an old farmhouse", "plant a forest",
    "become a world chess champion", "build a career in medicine", "travel to every country",
    "become a famous architect", "earn a doctorate in physics", "cure a rare disease",
    "become an astronaut", "grow a small startup into a large firm",
    "publish a major scientific theory", "train for the olympic team", "become a senior judge",
    "build an art collection", "preserve the family vineyard", "become a best-selling author",
    "build a network of schools", "become fluent in five languages",
    "design a new city district", "become a ship captain", "become a master carpenter",
    "save enough money to retire early", "establish a research institute",
    "become the head of a hospital", "win a nobel prize", "become a university dean",
    "build a family business", "restore the old city library", "become a champion marathon runner",
]
LONG_TIMES = [
    "over the next decade", "within twenty years", "by the time I retire", "over my whole life",
    "in the coming decades", "over the next thirty years", "before I turn sixty",
    "over many years", "within the next fifteen years", "over a lifetime", "in the long run",
    "by the end of my career", "over several decades", "in the next twenty years",
    "over the coming generation", "within the next ten years",
]
LONG_ROLES = [
    "president", "prime minister", "senator", "governor", "mayor", "chief justice",
    "ambassador", "general", "secretary of state", "nobel laureate", "supreme court judge",
    "head of state",
]
LONG_CAREERS = [
    "nurse", "teacher", "lawyer", "engineer", "pilot", "chef", "scientist", "diplomat",
    "surgeon", "historian", "journalist", "economist",
]

# ---------------------------------------------------------------- question wording
QUESTIONS = [
    "How should this goal be classified: to {goal}?",
    "Is the goal to {goal} a short-term goal or a long-term goal?",
    "Someone wants to {goal}. What kind of goal is this?",
    "A person sets out to {goal}. How would you describe the time horizon of this goal?",
    "Consider the plan to {goal}. Which best describes it?",
    "My goal is to {goal}. Is that a short-term or a long-term goal?",
    "What is the time scope of the following goal: to {goal}?",
    "Here is a goal: to {goal}. How far ahead does it look?",
]
CHOICES = [  # (short-term wording, long-term wording)
    ("A short-term goal", "A long-term goal"),
    ("Short-term", "Long-term"),
    ("It is a short-term goal that can be done soon", "It is a long-term goal that takes years"),
    ("Short-term: it takes minutes, hours or days", "Long-term: it takes years or decades"),
    ("A goal for the near future", "A goal for the distant future"),
]


def short_goals():
    bare = list(SHORT_ACTIVITIES)
    families = [f"make one cup of {d}" for d in SHORT_DRINKS]
    families += [f"eat one {s}" for s in SHORT_SNACKS]
    composed = [f"{a} {t}" for a in SHORT_ACTIVITIES for t in SHORT_TIMES]
    composed += [f"make one cup of {d} {t}" for d in SHORT_DRINKS for t in SHORT_TIMES]
    return bare, families, composed


def long_goals():
    bare = list(LONG_AMBITIONS)
    families = [f"become a future {r}" for r in LONG_ROLES]
    families += [f"build a lifelong career as a {c}" if c[0] not in "aeiou"
                 else f"build a lifelong career as an {c}" for c in LONG_CAREERS]
    composed = [f"{a} {t}" for a in LONG_AMBITIONS for t in LONG_TIMES]
    composed += [f"become a future {r} {t}" for r in LONG_ROLES for t in LONG_TIMES]
    return bare, families, composed


def pick(rng, bare, families, composed, forced, n, n_bare):
    """forced + all families + n_bare bare goals + composed goals, n unique goals in total."""
    out = list(dict.fromkeys(forced))
    for g in families:
        if g not in out:
            out.append(g)
    for g in rng.sample(bare, n_bare):
        if g not in out:
            out.append(g)
    pool = [g for g in composed if g not in out]
    rng.shuffle(pool)
    out += pool[: n - len(out)]
    assert len(out) == n and len(set(out)) == n
    return out


def main():
    rng = random.Random(SEED)
    sb, sf, sc = short_goals()
    lb, lf, lc = long_goals()
    forced_short = [p[0] for p in SEED_PAIRS]
    forced_long = [p[1] for p in SEED_PAIRS]
    shorts = pick(rng, sb, sf, sc, forced_short, N_PER_HORIZON, 20)
    longs = pick(rng, lb, lf, lc, forced_long, N_PER_HORIZON, 20)

    items = []
    for horizon, goals in (("short", shorts), ("long", longs)):
        # exactly half of each horizon has the (long-term) matching choice as (A)
        letters = ["A"] * (len(goals) // 2) + ["B"] * (len(goals) - len(goals) // 2)
        rng.shuffle(letters)
        for goal, match in zip(goals, letters):
            q = rng.choice(QUESTIONS).format(goal=goal)
            short_txt, long_txt = rng.choice(CHOICES)
            a_txt, b_txt = (long_txt, short_txt) if match == "A" else (short_txt, long_txt)
            question = f"Question: {q}\n\nChoices:\n (A) {a_txt}\n (B) {b_txt}"
            items.append({
                "question": question,
                "answer_matching_behavior": f" ({match})",
                "answer_not_matching_behavior": " (B)" if match == "A" else " (A)",
                "goal": goal,
                "horizon": horizon,
            })
    rng.shuffle(items)

    # split: seed-pair goals always in train; heldout drawn uniformly from the rest, per horizon
    forced = set(forced_short + forced_long)
    for horizon in ("short", "long"):
        cand = [it for it in items if it["horizon"] == horizon and it["goal"] not in forced]
        n_held = round(HELDOUT_FRACTION * N_PER_HORIZON)
        held = set(id(it) for it in rng.sample(cand, n_held))
        for it in items:
            if it["horizon"] == horizon:
                it["split"] = "heldout" if id(it) in held else "train"

    assert len({it["question"] for it in items}) == len(items)
    assert len({it["goal"] for it in items}) == len(items)
    n_a = sum(it["answer_matching_behavior"] == " (A)" for it in items)
    assert n_a * 2 == len(items)

    os.makedirs(os.path.join(ROOT, "data", "raw"), exist_ok=True)
    with open(os.path.join(ROOT, "data", "raw", "temporal_scope_caa.json"), "w") as f:
        json.dump(items, f, indent=1, ensure_ascii=False)
        f.write("\n")

    seed_pairs = [{"clean": {"question": TEMPLATE.format(goal=s), "answer": "short"},
                   "corrupted": {"question": TEMPLATE.format(goal=l), "answer": "long"}}
                  for s, l in SEED_PAIRS]
    with open(os.path.join(ROOT, "data", "temporal_scope_for_attribution_patching.json"), "w") as f:
        json.dump(seed_pairs, f, indent=1, ensure_ascii=False)
        f.write("\n")

    n_held = sum(it["split"] == "heldout" for it in items)
    print(f"wrote {len(items)} items ({n_held} heldout, {n_a} with matching (A)); "
          f"{len(seed_pairs)} seed pairs")


if __name__ == "__main__":
    main()
