"""
CPU benchmark: greedy decoding with our KV cache (model.generate) against transformers'
`generate` on the same random model, in the same process. Both produce the same tokens (the first
16 of every row are checked; later, a near-tie of the random model's logits can flip under fp32
rounding, so the count of fully identical rows is printed); the tokens/s ratio is reported.

    python bench/bench_generate.py [--json out.json]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import Config, Qwen2  # noqa: E402

SHAPE = dict(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args()
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(**SHAPE)).eval()
    ours = Qwen2(Config(**SHAPE)).eval()
    ours.load_state_dict(hf.state_dict())
    ids = torch.randint(0, SHAPE["vocab_size"], (a.batch, a.prompt))
    mask = torch.ones_like(ids)

    def run_hf():
        with torch.no_grad():
            return hf.generate(ids, attention_mask=mask, max_new_tokens=a.new, do_sample=False,
                               pad_token_id=0, eos_token_id=None)[:, a.prompt:].tolist()

    def run_ours():
        return ours.generate(ids, a.new)

    # Same tokens, up to rare near-ties of a random model's logits that fp32 rounding can flip.
    same = sum(o == h for o, h in zip(run_ours(), run_hf()))
    assert all(o[:16] == h[:16] for o, h in zip(run_ours(), run_hf())), "greedy outputs differ"
    t_hf, t_ours = best_of(run_hf, a.repeats), best_of(run_ours, a.repeats)
    tokens = a.batch * a.new
    result = {"shape": SHAPE, "batch": a.batch, "prompt": a.prompt, "new_tokens": a.new,
              "threads": torch.get_num_threads(), "transformers_tok_s": tokens / t_hf,
              "ours_tok_s": tokens / t_ours, "ratio_ours_over_transformers": t_hf / t_ours,
              "identical_rows": same}
    print(f"greedy decode, batch {a.batch}, prompt {a.prompt}, {a.new} new tokens, "
          f"{torch.get_num_threads()} threads; {same}/{a.batch} rows identical to transformers'")
    print(f"  transformers {tokens / t_hf:8.0f} tok/s\n  ours         {tokens / t_ours:8.0f} tok/s"
          f"\n  ours / transformers: {t_hf / t_ours:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
