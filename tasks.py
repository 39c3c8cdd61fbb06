"""
What a benchmark is, for the evaluator (eval.py) and the RL trainer (gfpo.py) alike: its questions,
its system prompt, the answer budget, how a response is graded and, where the task knows them, which
strategy a response follows. Grading lives here and only here: GFPO's reward of a rollout and every
accuracy of the evaluation are `task.grade`.

    task.name                 the benchmark's key, e.g. "aime24" (metrics.py: its official protocol)
    task.questions[q]         the user turn of question q, instructions included
    task.system               the system prompt
    task.max_new              new tokens an answer may take
    task.samples              S, samples per tag in the evaluation's tags run (the official count)
    task.pass_samples         n, samples of <think1> (and of the model's own tag) for Pass@1 and Pass@k
    task.grade(response, q)   whether the response answers question q right
    task.extract(response, q) what a majority vote compares: the final answer, None if there is none
                              (GPQA: the whole response, as the official votes compare texts)
    task.right(answer, q)     whether an extracted answer is right; grade(r, q) == right(extract(r, q), q)
    task.votes                whether the evaluation takes majority votes (Cons@k); False for code
    task.gold(q)              what a Cons@k winner is compared with by ==, or None where the official
                              Cons@k grades the winner like any answer, with right (GPQA)
    task.strategies           the strategies that task.classify(response) tells apart ((): none)
    task.classify(response)   the strategy of a response, or None

Four tasks: the synthetic task of the demo (data/synthetic.py; with its variant synthetic-short, where
the shortest strategy is the right one), math with gold answers graded by
math-verify, code with tests run in the sandbox (rewards.py), and GPQA's multiple choice graded by
the letter the response gives (choice_letter). A JSONL file is read by the one loader of its format,
data.load_prompts: math where a line has `answer`, code where it has `tests`, GPQA where it has
`choices` (data/prompts.py).

    python -m pytest -q test_tasks.py
"""
import re
from pathlib import Path

import metrics
from data import DataError, load_prompts, synthetic
from data.chat import SYSTEM
from data.prompts import GPQA_PROMPT, LETTERS, MATH_PROMPT

# The official letter extraction (LightEval's lazy_indices_regex for four letter choices, English, with
# extract_target_from_pred): the patterns in order of priority (0, 50, 100, 150, 200, 210, 250, 300);
# the first that matches anywhere gives the letter of its rightmost match. "(C)" counts as "C".
_LETTER = r"(?P<letter>[ABCD]|\([ABCD]\))"  # the four choices' LETTERS
_END = r"(?:\*\*)?(?:[.,: ]|$)"  # optional bold, then a full stop, comma, colon, space or the end
_ALONE = rf"(?:^| )(?:\*\*)?{_LETTER}{_END}"  # a letter on its own: at the start or after a space
CHOICE_PATTERNS = [re.compile(p) for p in (
    rf"(?i:final answer is):?\s*{_LETTER}\.?\s?I hope",
    rf"(?i:final answer.{{0,100}}?)\s+is:?\s*{_LETTER}",
    rf"(?i:answer):.{{0,50}}?{_ALONE}",
    rf"(?i:answer).{{0,50}}?{_ALONE}",
    rf"^(?:\*\*)?{_LETTER}{_END}",  # at the start of the response
    rf"\n(?:\*\*)?{_LETTER}{_END}",  # at the start of a line
    _ALONE,
    _LETTER,  # last resort: any capital A to D, even inside a word
)]


class Task:
    """The defaults of the interface: graded through extract and right, no strategies."""
    strategies = ()
    votes = True
    system = SYSTEM
    max_new = 32768  # the official evaluation's generation length
    samples, pass_samples = 4, metrics.PASS_N

    def grade(self, response, q):
        return self.right(self.extract(response, q), q)

    def gold(self, q):
        return None

    def classify(self, response):
        return None


class SyntheticTask(Task):
    """Questions of the demo task (sort a string of digits): answers are digit strings, and each
    solution opens with the name of its strategy. With short=True (synthetic-short), a response
    longer than the question's shortest solution has no answer (data/synthetic.py)."""
    strategies, system = tuple(synthetic.STRATEGIES), synthetic.SYSTEM
    samples, pass_samples = 4, 8  # enough for the toy's tables in seconds

    def __init__(self, examples, short=False):
        self.name = synthetic.TASKS[short]
        self.questions, self.golds = [ex.question for ex in examples], [ex.answer for ex in examples]
        self.max_new = 2 * max(len(t) for ex in examples for t in ex.traces)  # characters bound tokens
        self.budget = [min(map(len, ex.traces)) for ex in examples] if short else None

    def extract(self, response, q):
        if self.budget is not None and len(response.strip()) > self.budget[q]:
            return None  # longer than the shortest solution: synthetic-short counts no answer in it
        return synthetic.extract_answer(response)

    def right(self, answer, q):
        return answer is not None and answer == self.golds[q]

    def gold(self, q):
        return self.golds[q]

    def classify(self, response):
        return synthetic.classify(response)


class MathTask(Task):
    """Math questions with gold answers, asked with the authors' math prompt and graded as the
    official evaluation grades (rewards.py: math-verify extraction and comparison). The gold is the
    answer, or on MATH-500 the worked solution, which its official task grades against."""

    def __init__(self, prompts, name):
        import rewards
        self.rewards, self.name = rewards, name
        self.questions = [MATH_PROMPT.format(question=p.question) for p in prompts]
        official_gold = name in metrics.GOLD_FROM_SOLUTION  # MATH-500: the solution, where the file has it
        self.answers = [p.solution if official_gold and p.solution else p.answer for p in prompts]
        self.samples = metrics.SAMPLES_PER_TAG.get(name, Task.samples)
        self.golds = {}  # q -> the parsed gold, parsed when first needed: an RL prompt file holds thousands

    def grade(self, response, q):  # one call to the grader, where extract + right would be two
        return self.rewards.grade_math(response, self.answers[q])

    def extract(self, response, q):
        return self.rewards.extract_math(response)

    def right(self, answer, q):
        return answer is not None and self.rewards.math_equal(self.gold(q), answer)

    def gold(self, q):
        if q not in self.golds:
            self.golds[q] = self.rewards.parse_gold(self.answers[q])
        return self.golds[q]


class CodeTask(Task):
    """Programming problems with LiveCodeBench-style tests: a response is right when its last fenced
    code block passes every test in the sandbox (rewards.py), as LiveCodeBench scores pass@1. A
    response without a code block is wrong, never run."""
    name, votes = "code", False

    def __init__(self, prompts):
        import rewards
        self.rewards = rewards
        self.questions = [p.question for p in prompts]
        self.tests = [(p.tests, p.func_name) for p in prompts]

    def extract(self, response, q):
        return self.rewards.extract_code(response) or None

    def right(self, answer, q):
        return answer is not None and self.rewards.grade_code(answer, *self.tests[q]).passed


def choice_letter(text):
    """The letter (A to D) that the official evaluation reads from a response, None if it finds none."""
    for pattern in CHOICE_PATTERNS:
        matches = list(pattern.finditer(text))  # non-overlapping, left to right: the last is the rightmost
        if matches:
            return matches[-1].group("letter").strip("()")
    return None


class GPQATask(Task):
    """Multiple-choice questions (GPQA-Diamond) asked in the official prompt (GPQA_PROMPT) and graded
    as LightEval's gpqa_instruct metrics grade: the response's choice_letter against the gold letter.
    The official votes compare whole completion texts and grade the winner like any response, so a
    vote candidate is the response itself and there is no gold value to compare it with. Pass@1 and
    maj@k read the text as generated, native Cons@N strips it first: two samples equal but for
    leading or trailing whitespace, one candidate there and two here, are the only difference."""
    name = "gpqa"
    samples = metrics.SAMPLES_PER_TAG.get(name, Task.samples)

    def __init__(self, prompts):
        self.questions = [GPQA_PROMPT.format(question=p.question, **dict(zip(LETTERS, p.choices))) for p in prompts]
        self.answers = [p.answer for p in prompts]

    def extract(self, response, q):
        return response

    def right(self, answer, q):
        return answer is not None and choice_letter(answer) == self.answers[q]


def load_task(data, *, split="held_out", train_questions=synthetic.TRAIN_QUESTIONS,
              held_out=synthetic.HELD_OUT):
    """The task of --data: "synthetic" (its "train" or "held_out" questions, as data/synthetic.py
    splits them) or a JSONL file of math, code or choice (GPQA) prompts, one kind per file."""
    if data in synthetic.TASKS:
        train, rest = synthetic.split(train_questions, held_out)
        return SyntheticTask(train if split == "train" else rest, short=data == "synthetic-short")
    prompts = load_prompts(data)
    kinds = {p.kind for p in prompts}
    if len(kinds) > 1:
        raise DataError(data, None, None, f"mixes {' and '.join(sorted(kinds))} prompts; use one kind per file")
    if kinds == {"code"}:
        return CodeTask(prompts)
    if kinds == {"choice"}:
        return GPQATask(prompts)
    return MathTask(prompts, metrics.benchmark_of(data) or Path(data).stem)
