"""
vLLM's rollouts against the local engine's, on one GPU where vLLM is installed (bench/gpu.sh runs
it then): the weights the engine holds after a sync (its log-probabilities of a prompt against the
model's), the same policy drawn by both engines (accuracy per tag within sampling error), and the
throughput of both in generated tokens a second, measured in one process.

    pip install -r requirements-vllm.txt
    python ssft.py --steps 100 --out bench/out/ssft_gpu && python bench/gpu_vllm.py --model bench/out/ssft_gpu

Exits non-zero if the synced engine's log-probabilities are off (more than 0.05 nats a token on
average: bf16 against bf16), or an accuracy differs by more than 4 standard errors.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from data import encode  # noqa: E402
from data.tokenizer import load_tokenizer  # noqa: E402
from distributed import build_model, setup_world  # noqa: E402
from flags import model_dir  # noqa: E402
from sampling import LocalEngine, chat_prompts  # noqa: E402
from tasks import load_task  # noqa: E402
from vllm_engine import VLLMEngine  # noqa: E402


def timed(engine, model, jobs, **settings):
    """(generated ids, seconds to sync the weights, seconds to generate) of engine on jobs, as a
    GFPO step runs it: the weights synced, then the rollout phase."""
    t0 = time.time()
    engine.sync_weights(model)
    torch.cuda.synchronize()
    t1 = time.time()
    with engine.phase():
        out = engine.generate(jobs, **settings)
        torch.cuda.synchronize()
        return out, t1 - t0, time.time() - t1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an ssft.py run directory or a HF checkpoint directory")
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--samples", type=int, default=8, help="per question and tag")
    p.add_argument("--memory", type=float, default=0.5, help="the share of the GPU the engine may take")
    p.add_argument("--out", default="bench/out/gpu_vllm.json")
    a = p.parse_args()
    world, source = setup_world(), model_dir(a.model)
    model, tok = build_model(world, source).eval(), load_tokenizer(source / "tokenizer.json")
    task = load_task("synthetic", held_out=a.questions)
    prompts = chat_prompts(tok, task, 6)
    jobs = [(prompts.ids[q], prompts.slots[i], (0, q, i, s)) for q in range(len(task.questions)) for i in range(6)
            for s in range(a.samples)]
    settings = dict(temperature=0.7, top_p=0.95, max_new=task.max_new, stop=prompts.stop)
    longest = max(map(len, prompts.ids)) + max(map(len, prompts.slots)) + task.max_new

    vllm = VLLMEngine(source, world, memory=a.memory, max_len=longest, max_seqs=256)
    vllm.sync_weights(model)
    # the engine's weights: its log-probabilities of one training sequence's tokens against ours
    ids = prompts.ids[0] + prompts.slots[0] + encode(tok, task.questions[0])[:32]
    with vllm.phase():
        out = vllm.llm.generate([vllm.vllm.TokensPrompt(prompt_token_ids=ids)],
                                vllm.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    theirs = torch.tensor([d[t].logprob for d, t in zip(out.prompt_logprobs[1:], ids[1:])])
    with torch.no_grad():
        ours = torch.log_softmax(model(torch.tensor([ids], device=world.device))[0, :-1].float(), -1)
    ours = ours.gather(1, torch.tensor(ids[1:], device=world.device)[:, None])[:, 0].cpu()
    logp_gap = float((theirs - ours).abs().mean())

    report = {"device": torch.cuda.get_device_name(), "jobs": len(jobs), "logp_gap_nats": logp_gap}
    accuracy = {}
    for name, engine in (("local", LocalEngine(model, batch=256)), ("vllm", vllm)):
        gen, sync, seconds = timed(engine, model, jobs, **settings)
        tokens = sum(map(len, gen))
        right = np.array([task.grade(tok.decode(g, skip_special_tokens=True), q) for (_, _, (_, q, _, _)), g
                          in zip(jobs, gen)]).reshape(len(task.questions), 6, a.samples)
        accuracy[name] = right.mean((0, 2))
        report[name] = {"sync_seconds": sync, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                        "accuracy_per_tag": accuracy[name].tolist()}
    report["vllm_over_local_throughput"] = report["vllm"]["tokens_per_s"] / report["local"]["tokens_per_s"]
    n = len(task.questions) * a.samples
    z = [(x - y) / math.sqrt(max(x * (1 - x) + y * (1 - y), 1e-9) / n) for x, y in zip(*accuracy.values())]
    report["accuracy_z"] = z
    print(json.dumps(report, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    world.close()
    if logp_gap > 0.05 or max(map(abs, z)) > 4:
        sys.exit(f"error: vLLM differs from the model: log-probabilities {logp_gap:.3f} nats a token apart, "
                 f"accuracy z-scores {[round(v, 1) for v in z]}")


if __name__ == "__main__":
    main()
