"""
The cost of GFPO's update against GRPO's on the same rollouts, in one process: GFPO's forward and
backward cover one row per prompt (the prompt and the tag up to the forking token), GRPO's every
rollout (prompt, tag and answer, G per prompt). Also the whole step (rollouts + rewards + update),
where sampling dominates both.

    python bench/bench_gfpo.py                       # the demo's SSFT model (run `python ssft.py` first)
    python bench/bench_gfpo.py --model out/ssft --batch 16 --group 8 --json bench/out/cpu_gfpo.json
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gfpo  # noqa: E402
from distributed import World  # noqa: E402
from model import Qwen2  # noqa: E402
from flags import model_dir, parse_flags  # noqa: E402
from sampling import LocalEngine  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="out/ssft")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    if not (model_dir(a.model) / "config.json").exists():
        sys.exit(f"no model at {a.model}: run `python ssft.py` first")
    world, seconds = World(), {}
    model = Qwen2.from_pretrained(model_dir(a.model))
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the same weights for every repeat
    for mode, update in (("gfpo", gfpo.gfpo_update), ("grpo", gfpo.grpo_update)):
        cfg, _ = parse_flags(gfpo.GFPOConfig, ["--model", a.model, "--mode", mode, "--batch", str(a.batch),
                                               "--group", str(a.group)])
        data = gfpo.PromptSet(cfg, world, model_dir(a.model))
        t = time.perf_counter()
        ro = gfpo.rollouts(model.eval(), None, LocalEngine(model), data, list(range(a.batch)), cfg, world, step=0)
        seconds["rollouts_and_rewards"] = time.perf_counter() - t

        def step():
            model.train()
            update(model, ro, data, cfg, world)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up
        seconds[f"{mode}_update"] = timed(step, a.repeats)
        seconds[f"{mode}_tokens"] = sum(len(ids) for ids, _ in gfpo.grpo_rows(ro, data, cfg.max_len)) \
            if mode == "grpo" else sum(len(data.prompts.before_fork(q)) for q in ro.qs)
    ratio = seconds["gfpo_update"] / seconds["grpo_update"]
    step = {m: seconds["rollouts_and_rewards"] + seconds[f"{m}_update"] for m in ("gfpo", "grpo")}
    print(f"{a.batch} prompts x {a.group} rollouts, {torch.get_num_threads()} threads")
    print(f"  rollouts + rewards      {seconds['rollouts_and_rewards'] * 1000:8.1f} ms")
    for m in ("gfpo", "grpo"):
        print(f"  {m} update             {seconds[f'{m}_update'] * 1000:8.1f} ms over {seconds[f'{m}_tokens']} tokens"
              f"   whole step {step[m] * 1000:8.1f} ms")
    print(f"  GFPO update / GRPO update: {ratio:.3f}x;  whole step: {step['gfpo'] / step['grpo']:.3f}x "
          f"(rollouts are {seconds['rollouts_and_rewards'] / step['grpo']:.0%} of a GRPO step)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"seconds": seconds, "update_ratio": ratio, "step": step}, indent=2))


if __name__ == "__main__":
    main()
