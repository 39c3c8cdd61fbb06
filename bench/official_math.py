"""
Record what the paper's official evaluation decides on the real benchmarks' answers, for
test_rewards.py to hold rewards.py to: the votes and grades of LightEval as forked by the authors
(Sheng-J/SSFT, commit 02ba191: lighteval/metrics/utils/extractive_match_utils.py and
math_comparison.py), run from a checkout of that repository.

For every gold answer of AIME 2024, AIME 2025 and MATH-500 (../shared/data) it writes three
responses: the answer boxed as given, boxed without any whitespace, and boxed without \\left and
\\right. For each it records whether the official code extracts the same vote candidate as from
the gold (== on the extracted lists, as its majority votes compare), whether two of the three are
the same candidate, and whether it grades the response right (compare_gold_target, precision 6).
The gold is what the official task feeds the metric: MATH-500's `solution`, AIME's `answer`.

    git clone https://github.com/Sheng-J/SSFT /tmp/SSFT          # (needs the network)
    python bench/official_math.py --fork /tmp/SSFT                # rewrites bench/official_math.json
"""
import argparse
import importlib.util
import json
import logging
import re
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "official_math.json"
sys.path.insert(0, str(ROOT))
from metrics import GOLD_FROM_SOLUTION  # noqa: E402
GOLD_FIELD = {name: "solution" if name in GOLD_FROM_SOLUTION else "answer"  # what each official task grades against
              for name in ("aime24", "aime25", "math500")}


def variants(answer):
    return ["\\boxed{" + answer + "}", "\\boxed{" + re.sub(r"\s+", "", answer) + "}",
            "\\boxed{" + re.sub(r"\\(left|right)\b", "", answer) + "}"]


def official(fork):
    """The fork's extract and compare functions, imported without the rest of LightEval."""
    src = Path(fork) / "lighteval" / "src"
    sys.path.insert(0, str(src))
    # Only two modules of the package are needed; stand in for the ones that pull in datasets etc.
    for name in ("lighteval", "lighteval.tasks", "lighteval.metrics", "lighteval.metrics.utils", "lighteval.utils",
                 "lighteval.tasks.templates", "lighteval.tasks.templates.utils"):
        module = types.ModuleType(name)
        module.__path__ = [str(src / name.replace(".", "/"))]
        sys.modules[name] = module
    sys.modules["lighteval.tasks.requests"] = types.SimpleNamespace(Doc=object)
    sys.modules["lighteval.tasks.default_prompts"] = types.SimpleNamespace(
        LETTER_INDICES=[chr(65 + i) for i in range(26)], INTEGER_INDICES=[str(i) for i in range(1, 27)])
    assert importlib.util  # the fork's imports.py uses importlib.util without importing it
    from lighteval.metrics.utils.extractive_match_utils import (ExprExtractionConfig, LatexExtractionConfig,
                                                                extract_target_from_pred, get_extraction_regexes)
    from lighteval.metrics.utils.math_comparison import compare_gold_target
    from lighteval.utils.language import Language
    logging.disable(logging.CRITICAL)
    # The metrics of the *_sot6 tasks: normalize_gold and normalize_pred, strip_strings=True.
    regexes = get_extraction_regexes(None, [ExprExtractionConfig(), LatexExtractionConfig()], Language.ENGLISH)
    return (lambda text: extract_target_from_pred(text.strip(), regexes)), compare_gold_target


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fork", required=True, help="a checkout of github.com/Sheng-J/SSFT")
    extract, compare = official(parser.parse_args().fork)
    records = []
    for name, gold_field in GOLD_FIELD.items():
        for n, line in enumerate((DATA / f"{name}.jsonl").read_text().splitlines(), 1):
            row = json.loads(line)
            gold = str(row[gold_field])
            texts = variants(str(row["answer"]))
            gold_x, xs = extract(gold), [extract(t) for t in texts]
            records.append({"file": name, "line": n, "same_as_gold": [x == gold_x for x in xs],
                            "same_pairs": [xs[0] == xs[1], xs[0] == xs[2], xs[1] == xs[2]],
                            "right": [bool(compare(gold_x, x)) for x in xs]})
    OUT.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    split = sum(not all(r["same_pairs"]) for r in records)
    wrong = sum(not all(r["right"]) for r in records)
    print(f"wrote {OUT}: {len(records)} golds; spellings that split the official vote: {split}; "
          f"graded wrong by the official code: {wrong}")


if __name__ == "__main__":
    main()
