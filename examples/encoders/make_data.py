"""Small generated datasets for encoder fine-tuning, in the JSONL formats `finetune` jobs read.

- NER (`method: token_classification`): sentences from templates over lists of people, places and
  organisations, `{"tokens": [...], "tags": [...]}` with BIO tags PER / LOC / ORG, all lower case (MiniLM is
  uncased anyway). The held-out sentences are none of the training sentences.
- Topics (`method: classification`): `{"text": ..., "label": ...}` with 4 labels (sports, business, science,
  weather), sentences from per-topic templates and vocabularies.

    python examples/encoders/make_data.py --out /tmp/encoders            # 2,000 train / 500 held-out each
    python examples/encoders/make_data.py --out /tmp/small --train 400 --valid 200
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any

WORD = re.compile(r"\w+|[^\w\s]")  # how LLM OS splits a text into words (workers/engines/encoder.py)

FIRST = ["james", "maria", "wei", "fatima", "olivia", "lucas", "aisha", "noah", "sofia", "kenji", "amara", "liam",
         "elena", "omar", "chloe", "ravi", "hannah", "mateo", "yuki", "grace", "ivan", "zara", "diego", "nina",
         "samuel", "leila", "arjun", "emma", "tomas", "priya", "felix", "ines", "hugo", "mei", "jonas", "alice"]
LAST = ["smith", "garcia", "chen", "okafor", "novak", "silva", "kowalski", "tanaka", "haddad", "muller", "rossi",
        "patel", "johnson", "kim", "dubois", "larsen", "moreau", "costa", "nguyen", "schmidt", "ali", "brown",
        "fischer", "lopez", "ivanova", "sato", "mensah", "weber", "jensen", "romero", "baker", "singh"]
PLACES = ["paris", "lagos", "toronto", "new york", "sao paulo", "berlin", "nairobi", "osaka", "lima", "oslo",
          "cape town", "madrid", "seoul", "denver", "glasgow", "hanoi", "quito", "lyon", "perth", "tunis",
          "kraków", "bogota", "accra", "vienna", "san diego", "riga", "porto", "dubai", "manila", "leeds",
          "buenos aires", "cairo", "helsinki", "mumbai", "austin", "zurich", "nagoya", "dakar", "hobart", "bern"]
ORG_HEADS = ["acme", "globex", "initech", "umbrella", "stark", "wayne", "hooli", "vandelay", "cyberdyne", "tyrell",
             "oscorp", "wonka", "soylent", "massive", "aperture", "blue sun", "monarch", "gringotts", "nakatomi",
             "pied piper", "dunder", "sterling", "prestige", "virtucon", "zorg", "bluth", "weyland", "duff"]
ORG_TAILS = ["corp", "inc", "labs", "bank", "group", "holdings", "systems", "industries", "foundation", "media",
             "airlines", "motors", "university", "institute", "partners", "energy"]

NER_TEMPLATES = [
    "{PER} lives in {LOC} .", "{PER} works for {ORG} in {LOC} .", "{ORG} opened a new office in {LOC} .",
    "yesterday {PER} met {PER} at the {ORG} headquarters .", "{PER} moved from {LOC} to {LOC} last year .",
    "according to {PER} , {ORG} will hire 200 people .", "the mayor of {LOC} , {PER} , visited {ORG} .",
    "{ORG} announced that {PER} is its new chief executive .", "shares of {ORG} fell after the news from {LOC} .",
    "{PER} flew to {LOC} on monday .", "in {LOC} , {PER} signed a deal with {ORG} .",
    "{PER} and {PER} founded {ORG} in {LOC} .", "a spokesperson for {ORG} said the plant in {LOC} is closing .",
    "{PER} , who was born in {LOC} , joined {ORG} in 2019 .", "the team from {LOC} beat {ORG} on sunday .",
    "we asked {PER} about the weather in {LOC} .", "{ORG} sued {ORG} over a patent .",
    "{PER} said she would stay in {LOC} .", "the conference in {LOC} was sponsored by {ORG} .",
    "{PER} thanked {PER} for the help .",
]

TOPICS: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "sports": (["the {team} won the {event} after a late {play} .", "{player} scored twice as the {team} beat "
                "their rivals .", "fans cheered when the {team} took the {event} title .", "the coach said the "
                "{team} need a better {play} before the {event} .", "{player} was injured during the {event} ."],
               {"team": ["home side", "visitors", "national team", "league leaders", "underdogs"],
                "event": ["final", "cup match", "derby", "championship", "semi-final", "tournament"],
                "play": ["goal", "penalty", "touchdown", "free kick", "defence", "sprint finish"],
                "player": ["the striker", "the captain", "the goalkeeper", "the rookie", "the veteran winger"]}),
    "business": (["the company reported {trend} {metric} for the {period} .", "investors expect {trend} {metric}"
                  " after the merger .", "the board approved a {deal} worth millions .", "analysts said {metric} "
                  "were {trend} than forecast this {period} .", "the firm plans a {deal} to cut costs ."],
                 {"trend": ["higher", "lower", "record", "weaker", "stronger", "flat"],
                  "metric": ["profits", "revenues", "sales", "earnings", "margins", "dividends"],
                  "period": ["quarter", "fiscal year", "first half", "season"],
                  "deal": ["takeover", "share buyback", "restructuring", "acquisition", "bond issue"]}),
    "science": (["researchers found that {thing} can {verb} {object} .", "a new study of {thing} was published in"
                 " a journal .", "scientists used a {tool} to {verb} {object} .", "the experiment showed how "
                 "{thing} {verb} {object} in the lab .", "the {tool} helped the team observe {thing} ."],
                {"thing": ["cells", "proteins", "bacteria", "neurons", "galaxies", "molecules", "genes"],
                 "verb": ["repair", "detect", "absorb", "measure", "produce", "bind"],
                 "object": ["damaged tissue", "dark matter", "carbon dioxide", "light", "signals", "enzymes"],
                 "tool": ["microscope", "telescope", "particle detector", "gene sequencer", "spectrometer"]}),
    "weather": (["expect {cond} with temperatures {temp} this {when} .", "a {storm} will bring {cond} to the "
                 "coast {when} .", "forecasters warn of {cond} and {storm} {when} .", "the {when} will be {temp} "
                 "with some {cond} .", "after the {storm} , skies clear and it turns {temp} ."],
                {"cond": ["heavy rain", "snow showers", "thick fog", "sunshine", "strong winds", "hail"],
                 "temp": ["well below freezing", "mild", "unusually warm", "near normal", "cold"],
                 "when": ["weekend", "afternoon", "tonight", "morning", "week"],
                 "storm": ["cold front", "thunderstorm", "heatwave", "tropical storm", "blizzard"]}),
}


def ner_example(rng: random.Random, pools: dict[str, list[str]]) -> dict[str, Any]:
    template = rng.choice(NER_TEMPLATES)
    tokens: list[str] = []
    tags: list[str] = []
    for part in re.split(r"(\{[A-Z]+\})", template):
        if part.startswith("{"):
            kind = part[1:-1]
            words = WORD.findall(rng.choice(pools[kind]))
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        else:
            words = WORD.findall(part)
            tokens += words
            tags += ["O"] * len(words)
    return {"tokens": tokens, "tags": tags}


def ner_sets(rng: random.Random, n_train: int, n_valid: int) -> tuple[list[dict], list[dict]]:
    people = [f"{a} {b}" for a in FIRST for b in LAST] + FIRST  # full names, and first names alone
    pools = {"PER": people, "LOC": PLACES, "ORG": [f"{a} {b}" for a in ORG_HEADS for b in ORG_TAILS]}
    seen: set[str] = set()
    train = []
    while len(train) < n_train:
        ex = ner_example(rng, pools)
        train.append(ex)
        seen.add(" ".join(ex["tokens"]))
    valid = []  # held apart: no sentence of the training set
    while len(valid) < n_valid:
        ex = ner_example(rng, pools)
        if " ".join(ex["tokens"]) not in seen:
            valid.append(ex)
    return train, valid


def topic_example(rng: random.Random, label: str) -> dict[str, str]:
    templates, slots = TOPICS[label]
    text = rng.choice(templates)
    for slot, values in slots.items():
        while "{" + slot + "}" in text:
            text = text.replace("{" + slot + "}", rng.choice(values), 1)
    return {"text": text, "label": label}


def topic_sets(rng: random.Random, n_train: int, n_valid: int) -> tuple[list[dict], list[dict]]:
    labels = sorted(TOPICS)
    return ([topic_example(rng, labels[i % 4]) for i in range(n_train)],
            [topic_example(rng, labels[i % 4]) for i in range(n_valid)])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make(out: Path, n_train: int = 2000, n_valid: int = 500, seed: int = 0) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = {}
    for name, (train, valid) in (("ner", ner_sets(rng, n_train, n_valid)),
                                 ("topics", topic_sets(rng, n_train, n_valid))):
        for split, rows in (("train", train), ("valid", valid)):
            files[f"{name}_{split}"] = out / f"{name}_{split}.jsonl"
            write_jsonl(files[f"{name}_{split}"], rows)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/encoders/data"))
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--valid", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for name, path in make(a.out, a.train, a.valid, a.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
