"""
CPU benchmark: greedy decoding with our KV cache (model.generate) against transformers'
`generate` on the same random model, in the same process, for prompts of equal lengths and of
different lengths (left-padded). The count of rows whose tokens are identical to transformers' is
printed beside the tokens/s ratio.

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
             num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)


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
    results = {"shape": SHAPE, "batch": a.batch, "new_tokens": a.new, "threads": torch.get_num_threads()}
    print(f"greedy decode, batch {a.batch}, {a.new} new tokens, {torch.get_num_threads()} threads")
    # Equal prompts, and prompts of different lengths (left-padded, with an attention mask).
    for case, lengths in (("equal", [a.prompt] * a.batch),
                          ("ragged", [a.prompt // 2 + (a.prompt // 2) * i // (a.batch - 1) for i in range(a.batch)])):
        prompts = [torch.randint(0, SHAPE["vocab_size"], (n,)).tolist() for n in lengths]
        P = max(lengths)
        ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])

        def run_hf():
            with torch.no_grad():
                return hf.generate(ids, attention_mask=mask, max_new_tokens=a.new, do_sample=False,
                                   pad_token_id=0, eos_token_id=None)[:, P:].tolist()

        def run_ours():
            return ours.generate(prompts, a.new)

        same = sum(o == h for o, h in zip(run_ours(), run_hf()))  # a near-tie could flip a token in fp32
        t_hf, t_ours = best_of(run_hf, a.repeats), best_of(run_ours, a.repeats)
        tokens = a.batch * a.new
        results[case] = {"prompt_lengths": lengths, "transformers_tok_s": tokens / t_hf,
                         "ours_tok_s": tokens / t_ours, "ratio_ours_over_transformers": t_hf / t_ours,
                         "identical_rows": same}
        print(f"  {case:6} prompts {min(lengths)}-{max(lengths)}: transformers {tokens / t_hf:6.0f} tok/s, "
              f"ours {tokens / t_ours:6.0f} tok/s, ours/transformers {t_hf / t_ours:.2f}x "
              f"({same}/{a.batch} rows identical)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
