"""
The synthetic task of the demo: sort a string of digits, with four different strategies.

Every question ("sort 72924") has one correct solution per strategy, each ending in the same
answer, and each recognisable from its text:

    smallest  selection sort from the front: take the smallest digit, write what is left
              "smallest 2|7924 2|794 4|79 7|9 9| answer 22479"
    largest   selection sort from the back: take the largest digit, then read the picks backwards
              "largest 9|7224 7|224 4|22 2|2 2| answer 22479"
    count     counting sort: how many of each digit, in increasing order
              "count 2x2 4x1 7x1 9x1 answer 22479"
    insert    insertion sort: the sorted prefix after each digit is inserted
              "insert 7 27 279 2279 22479 answer 22479"

The strategies cost different amounts on different questions (insertion grows with the square of
the length, counting with the number of distinct digits, selection writes every remainder), so
which one a small model executes best depends on the question, which is what GFPO learns to use.

`classify` names the strategy of any generated text (or None), `check` grades an answer; they are
what eval.py uses for the tags x strategies table, purity and accuracy.

Two tasks share these questions and traces (TASKS, the --data of every script). "synthetic": any
correct answer counts. "synthetic-short": an answer counts only if the whole response is no longer
than the shortest of the question's four solutions. Then the right strategy depends on
the question, predictably: counting sort is the shortest on 81% of the training questions, insertion
sort on most of those of 3 digits and half of those of 4, so a policy that reads the question can
beat every single strategy, which no policy can on the plain task (there the best tag per question
is as good as the best tag).

    python -c "from data.synthetic import make_examples; print(make_examples(2, seed=0))"
"""
import random
import re

from data.traces import Example

STRATEGIES = ("smallest", "largest", "count", "insert")
TASKS = ("synthetic", "synthetic-short")  # the plain task, and the one where brevity picks the strategy
SYSTEM = "Sort the digits."  # the task's system message: short, so that CPU time goes to the traces


def solve(digits, strategy):
    """The solution text of `strategy` for the digit string `digits`."""
    answer = "".join(sorted(digits))
    if strategy == "smallest" or strategy == "largest":
        rest, steps = list(digits), []
        for _ in digits:
            pick = min(rest) if strategy == "smallest" else max(rest)
            rest.remove(pick)  # removes the first occurrence; the remainder keeps its order
            steps.append(f"{pick}|{''.join(rest)}")
        body = " ".join(steps)
    elif strategy == "count":
        body = " ".join(f"{d}x{digits.count(d)}" for d in sorted(set(digits)))
    elif strategy == "insert":
        prefix, steps = [], []
        for d in digits:
            prefix.append(d)
            prefix.sort()
            steps.append("".join(prefix))
        body = " ".join(steps)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return f"{strategy} {body} answer {answer}"


def question(digits):
    return f"sort {digits}"


def make_examples(n, seed, min_len=3, max_len=8):
    """n distinct questions, each with its four solutions (sources name the strategies)."""
    rng = random.Random(seed)
    seen, examples = set(), []
    while len(examples) < n:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(min_len, max_len)))
        if digits in seen:
            continue
        seen.add(digits)
        examples.append(Example(id=f"sort-{digits}", question=question(digits),
                                traces=[solve(digits, s) for s in STRATEGIES],
                                answer="".join(sorted(digits)), sources=list(STRATEGIES)))
    return examples


# The demo's split: ssft.py trains on the first TRAIN_QUESTIONS questions (gfpo.py draws its RL
# prompts from them too), and eval.py evaluates the HELD_OUT questions that follow.
TRAIN_QUESTIONS, HELD_OUT = 2000, 100


def split(n_train=TRAIN_QUESTIONS, n_held_out=HELD_OUT):
    """The training questions and the held-out ones, disjoint (every script agrees on it)."""
    examples = make_examples(n_train + n_held_out, seed=0)
    return examples[:n_train], examples[n_train:]


def classify(text):
    """The strategy a generated solution uses (its opening word), or None."""
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    return first if first in STRATEGIES else None


ANSWER = re.compile(r"answer (\d+)")


def extract_answer(text):
    """The last `answer <digits>` in the text, or None."""
    found = ANSWER.findall(text)
    return found[-1] if found else None


def check(text, answer):
    return extract_answer(text) == answer


def tokenizer_for(examples, vocab_size=384):
    """A small byte-level BPE trained on the task's chat-formatted sequences and all the tags."""
    from data.chat import IM_END, prompt_text, tag_text
    from data.tokenizer import train_tokenizer
    tags = [tag_text(None)] + [tag_text(i) for i in range(9)]
    texts = [prompt_text(ex.question, SYSTEM) + tags[k % len(tags)] + t + IM_END
             for k, ex in enumerate(examples) for t in ex.traces]
    return train_tokenizer(texts, vocab_size)
