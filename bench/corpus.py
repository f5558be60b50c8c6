"""Deterministic, realistic essays for the benchmark: varied Markdown from word lists.

Essay `i` of a seed is always the same text, so archives of any size are reproducible and
can be generated one batch at a time (nothing holds the whole archive in memory).
"""

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from app.models import PostIn

NOUNS = (
    "market breadth liquidity rotation volatility yield curve spread credit dollar index "
    "earnings guidance margin multiple momentum flow positioning hedge skew dispersion "
    "correlation regime signal drawdown rally selloff bid ask volume futures option gamma "
    "duration inflation payroll consumer cycle sector leadership tape bond equity commodity "
    "oil copper gold currency basis carry premium risk buyback allocation benchmark"
).split()
VERBS = (
    "argued doubted tracked confirmed rejected weighed noticed missed priced discounted "
    "reversed extended absorbed questioned flagged underweighted chased faded defended"
).split()
ADJECTIVES = (
    "narrow broad quiet crowded fragile stubborn late early defensive cyclical structural "
    "tactical thin heavy hidden obvious contrarian synchronized orderly disorderly"
).split()
FILLER = (
    "the a of to and in that is was for on with as it at by this from but not or which "
    "when while because although still only even already again than more less"
).split()
MINDS = ("Macro", "Flow", "Contrarian", "Value", "Momentum", "Volatility", "Credit")
OUTCOMES = ("unknown", "split", "consensus", "contested", "deadlock")
STATUSES = ("developing", "accelerating", "partially reversing", "confirmed", "fading")
TICKERS = (
    "QQQ SPY TSLA META NVDA AAPL MSFT AMZN GOOGL IWM TLT HYG XLE XLF GLD USO SMH ARKK EEM "
    "VIX DXY JPM BAC XOM CVX KRE XLU XLP UUP EFA FXI KWEB SLV COPX MU AMD INTC NFLX"
).split()
THEMES = [f"{a}-{n}" for a in ADJECTIVES[:12] for n in NOUNS[:12]]
TAG_POOL = TICKERS + THEMES  # rank 0 ("QQQ") is by far the most common: Zipf weights below
TAG_WEIGHTS = [1 / (rank + 1) ** 1.1 for rank in range(len(TAG_POOL))]
COMMON_TAG = TAG_POOL[0]
COMMON_WORD = "market"
RARE_WORD = "zugzwang"  # in one essay of a thousand
PHRASE = "breadth is thinning"
START = datetime(2021, 1, 4, 14, 30, tzinfo=UTC)
SPAN = timedelta(days=5 * 365)


def story_title(number: int) -> str:
    rng = random.Random(f"story-{number}")
    words = (rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(NOUNS))
    return f"{' '.join(w.title() for w in words)} {number}"


class Corpus:
    def __init__(self, size: int, seed: int = 7) -> None:
        self.size = size
        self.seed = seed
        self.step = SPAN / size

    def essays(self, start: int = 0, stop: int | None = None) -> Iterator[PostIn]:
        for i in range(start, self.size if stop is None else stop):
            yield self.essay(i)

    def essay(self, i: int) -> PostIn:
        rng = random.Random(self.seed * 1_000_003 + i)
        jitter = timedelta(seconds=rng.randrange(int(self.step.total_seconds() * 0.8) + 1))
        doc: dict[str, object] = {
            "title": self._title(rng, i),
            "body": self._body(rng, i),
            "cycle": 100 + i * 2 + (i % 3 == 0),  # not every cycle has an essay
            "published_at": (START + self.step * i + jitter).replace(microsecond=0),
            "author": "Workshop",
            "tags": self._tags(rng),
            "stories": [
                {"title": story_title(n), "status": rng.choice(STATUSES)}
                for n in sorted({i // 60 + k for k in range(rng.randrange(4))})
            ],
        }
        if rng.random() < 0.9:
            names = rng.sample(MINDS, rng.randrange(6))
            doc["debate"] = {
                "outcome": rng.choice(OUTCOMES),
                "conviction": round(rng.random(), 2),
                "minds": [{"name": n, "confidence": round(rng.random(), 2)} for n in names],
            }
        return PostIn.model_validate(doc)

    def _title(self, rng: random.Random, i: int) -> str:
        a, n1, n2 = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(NOUNS)
        verb = rng.choice(VERBS).title()
        shapes = (
            f"The {n1.title()} {verb} Is {a.title()}, Not a {n2.title()} Signal",
            f"Why the {a.title()} {n1.title()} Matters for {n2.title()}",
            f"{n1.title()} and {n2.title()}: a {a.title()} Reading, Cycle {i}",
        )
        return rng.choice(shapes)

    def _tags(self, rng: random.Random) -> list[str]:
        tags: list[str] = []
        for tag in rng.choices(TAG_POOL, TAG_WEIGHTS, k=rng.randrange(7)):
            if tag not in tags:
                tags.append(tag)
        return tags

    def _sentence(self, rng: random.Random) -> str:
        words = []
        for _ in range(rng.randrange(8, 22)):
            pool = rng.random()
            if pool < 0.45:
                words.append(rng.choice(FILLER))
            elif pool < 0.8:
                words.append(rng.choice(NOUNS))
            elif pool < 0.9:
                words.append(rng.choice(ADJECTIVES))
            else:
                words.append(rng.choice(VERBS))
        if rng.random() < 0.15:
            at = rng.randrange(len(words))
            words[at] = rng.choice([f"*{words[at]}*", f"**{words[at]}**", f"`{words[at]}`"])
        if rng.random() < 0.05:
            words.append(f"([{rng.choice(TICKERS)}](https://example.com/q/{rng.randrange(999)}))")
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice(".....?!")

    def _paragraph(self, rng: random.Random) -> str:
        return " ".join(self._sentence(rng) for _ in range(rng.randrange(3, 7)))

    def _body(self, rng: random.Random, i: int) -> str:
        target = rng.randrange(800, 1501)
        blocks: list[str] = []
        words = 0
        if i % 1000 == 999:
            blocks.append(f"The Contrarian called the tape a {RARE_WORD} for both sides.")
        if rng.random() < 0.2:
            blocks.append(f"Flow said {PHRASE} under the surface; Macro disagreed.")
        while words < target:
            kind = rng.random()
            if kind < 0.1:
                block = f"## {self._sentence(rng).rstrip('.?!')}"
            elif kind < 0.2:
                block = "\n".join(f"- {self._sentence(rng)}" for _ in range(rng.randrange(2, 6)))
            elif kind < 0.25:
                block = "\n".join(
                    f"{n}. {self._sentence(rng)}" for n in range(1, rng.randrange(3, 6))
                )
            elif kind < 0.3:
                block = f"> {self._paragraph(rng)}"
            elif kind < 0.32:
                rows = [f"| {rng.choice(TICKERS)} | {rng.uniform(-5, 5):.1f}% |" for _ in range(4)]
                block = "| Ticker | Move |\n|---|---|\n" + "\n".join(rows)
            else:
                block = self._paragraph(rng)
            blocks.append(block)
            words += len(block.split())
        return "\n\n".join(blocks)
