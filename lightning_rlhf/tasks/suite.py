"""The bundled task suite: small instruction-following problems with an exact programmatic oracle.

Three kinds of problem, each a short prompt ending in ``=`` whose answer is a short string:

- ``add``:  ``"47+38="`` -> ``"85"``          two-digit addition (carries make it hard)
- ``rev``:  ``"rev cbda="`` -> ``"adbc"``      reverse 3-6 letters from a-h
- ``cnt``:  ``"cnt b abbcb="`` -> ``"3"``      count a letter in 3-6 letters from a-c

The oracle recomputes the answer from the prompt alone, so it scores any response to any prompt of
the suite, seen or not.

The SFT demonstrations come from a *noisy demonstrator* (``demonstrate``): like a hurried human
labeller it drops the last letter of half its reversals and counts one too many in half its counts.
Comparing two answers is easier than writing the right one, so the preference pairs are exact:
the rejected answer is always wrong, often one of the demonstrator's habitual mistakes. This is the
premise of RLHF: imitation copies the demonstrator's mistakes (a ~1M-parameter model reaches about
two thirds of the suite after SFT), and the reward model learns what the comparisons know.

Held-out problems are disjoint from training problems: a problem's split is a hash of its prompt.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TASKS = ("add", "rev", "cnt")
# the default mixture: addition is the hard part, so it gets half of the problems
MIXTURE = ("add", "rev", "add", "cnt")
_ADD = re.compile(r"^(\d+)\+(\d+)=$")
_REV = re.compile(r"^rev ([a-z]+)=$")
_CNT = re.compile(r"^cnt ([a-z]) ([a-z]+)=$")


@dataclass(frozen=True)
class Problem:
    task: str
    prompt: str
    answer: str


def solve(prompt: str) -> str | None:
    """The correct answer to a prompt of the suite, or None if the prompt is not one of ours."""
    prompt = prompt.strip()
    if m := _ADD.match(prompt):
        return str(int(m[1]) + int(m[2]))
    if m := _REV.match(prompt):
        return m[1][::-1]
    if m := _CNT.match(prompt):
        return str(m[2].count(m[1]))
    return None


def score(prompt: str, response: str) -> float:
    """1.0 when the response (up to its first newline, surrounding spaces ignored) is the answer."""
    answer = solve(prompt)
    if answer is None:
        raise ValueError(f"not a prompt of the bundled task suite: {prompt!r}")
    return float(response.split("\n", 1)[0].strip() == answer)


def is_held_out(prompt: str, fraction: float) -> bool:
    """Deterministic split: the same prompt always falls on the same side."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _add(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return Problem("add", f"{a}+{b}=", str(a + b))


def _rev(rng: random.Random) -> Problem:
    word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
    return Problem("rev", f"rev {word}=", word[::-1])


def _cnt(rng: random.Random) -> Problem:
    letter = rng.choice("abc")
    word = "".join(rng.choice("abc") for _ in range(rng.randint(3, 6)))
    return Problem("cnt", f"cnt {letter} {word}=", str(word.count(letter)))


GENERATORS: dict[str, Callable[[random.Random], Problem]] = {"add": _add, "rev": _rev, "cnt": _cnt}


def sample_problems(
    n: int,
    seed: int,
    held_out: bool,
    held_out_fraction: float = 0.1,
    tasks: Sequence[str] = MIXTURE,
) -> list[Problem]:
    """``n`` problems drawn round-robin over ``tasks`` from one side of the split (repeats allowed)."""
    unknown = set(tasks) - set(GENERATORS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; the suite has {list(GENERATORS)}")
    rng = random.Random(seed)
    out: list[Problem] = []
    while len(out) < n:
        p = GENERATORS[tasks[len(out) % len(tasks)]](rng)
        if is_held_out(p.prompt, held_out_fraction) == held_out:
            out.append(p)
    return out


def habitual_mistake(problem: Problem) -> str | None:
    """The noisy demonstrator's mistake on a problem, or None for tasks it gets right."""
    if problem.task == "rev":
        return problem.answer[:-1]
    if problem.task == "cnt":
        return str(int(problem.answer) + 1)
    return None


def demonstrate(problem: Problem, rng: random.Random, noise: float = 0.5) -> str:
    """The noisy demonstrator's answer: its habitual mistake with probability ``noise``."""
    mistake = habitual_mistake(problem)
    return mistake if mistake is not None and rng.random() < noise else problem.answer


def corrupt(problem: Problem, rng: random.Random) -> str:
    """A wrong answer: the demonstrator's habitual mistake, a near miss (one character changed),
    a wrong length, or another problem's answer."""
    ans = problem.answer
    alphabet = "0123456789" if ans.isdigit() else "abcdefgh"
    kind = rng.choice(("habit", "near", "near", "length", "other"))
    if kind == "habit" and habitual_mistake(problem) is not None:
        return habitual_mistake(problem)
    if kind in ("habit", "near"):
        i = rng.randrange(len(ans))
        wrong = ans[:i] + rng.choice(alphabet.replace(ans[i], "")) + ans[i + 1 :]
    elif kind == "length":
        wrong = ans[:-1] if len(ans) > 1 and rng.random() < 0.5 else ans + rng.choice(alphabet)
    else:
        wrong = GENERATORS[problem.task](rng).answer
    if wrong == ans:  # "other" can draw the same answer; a near miss never does
        wrong = ans + rng.choice(alphabet)
    return wrong
