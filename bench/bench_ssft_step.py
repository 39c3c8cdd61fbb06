"""
CPU benchmark: time of an SSFT step (N x M cost grid without gradients, Hungarian matching, update
on the M matched sequences) divided by the time of a `mixed` step (the update alone) on the same
questions and model, measured in the same process.

    python bench/bench_ssft_step.py [--steps 20] [--match-tokens 16] [--json out.json]
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ssft  # noqa: E402
from distributed import Dist  # noqa: E402
from data import encode, encode_example, forking_tags, tag_text  # noqa: E402
from data.synthetic import SYSTEM, make_examples, tokenizer_for  # noqa: E402
from data.tokenizer import special_id  # noqa: E402
from model import Config, Qwen2  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--match-tokens", type=int, default=16)
    p.add_argument("--model", default="demo")
    p.add_argument("--json")
    a = p.parse_args()
    train = make_examples(640, seed=0)
    tok = tokenizer_for(train)
    encs = [encode_example(tok, e, SYSTEM) for e in train]
    tags, shared, pad = forking_tags(tok, 6), encode(tok, tag_text(None)), special_id(tok, "<|endoftext|>")
    torch.manual_seed(0)
    base = Qwen2(Config(**{**Config.preset(a.model).__dict__, "vocab_size": tok.get_vocab_size()}))
    seconds = {}
    for mode in ("mixed", "ssft", "mixed", "ssft"):  # twice each, interleaved: the second pair counts
        cfg = ssft.TrainConfig(mode=mode, steps=a.steps, match_tokens=a.match_tokens)
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        t = time.perf_counter()
        for step in range(a.steps):
            ssft.ssft_step(model, opt, cfg, train, encs, tags, shared, pad, step, Dist())
        seconds[mode] = (time.perf_counter() - t) / a.steps
    ratio = seconds["ssft"] / seconds["mixed"]
    print(f"{a.model} model, batch {cfg.batch} questions x 4 traces, 6 tags, L = {a.match_tokens}, "
          f"{torch.get_num_threads()} threads")
    print(f"  mixed step {seconds['mixed'] * 1000:7.1f} ms\n  ssft step  {seconds['ssft'] * 1000:7.1f} ms"
          f"\n  ssft / mixed: {ratio:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "match_tokens": a.match_tokens,
                                            "seconds_per_step": seconds, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
