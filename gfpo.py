"""
Global Forking Policy Optimization (GFPO): reinforcement learning of which reasoning mode to open,
with the policy gradient at the global forking token only; and GRPO, its baseline.

After SSFT every tag <think{i}> opens its own mode of reasoning. GFPO learns, per question, which
one to open. Every step, for each prompt x of the batch:
  1. G rollouts. Rollout g draws its forking token (the tag's digit) from the policy restricted to
     the N tag tokens at the sampling temperature T,  pi(i | x) = softmax(z_x[tag ids] / T)_i
     (z_x: the logits at the forking position), then the rest of the tag is forced and the answer
     generated with the KV cache at the paper's T = 0.7, top-p 0.95. Each rollout is seeded by
     (seed, step, prompt, rollout), so any rank count draws the same ones.             (rollouts)
  2. Rewards r_g in {0, 1} (the synthetic checker, or rewards.grade_math) and group-normalised
     advantages A_g = (r_g - mean r) / (std r + 1e-6), std with Bessel's correction, in fp64.
     A group whose rewards are all equal carries no signal: it is dropped from the loss and from
     its normaliser (DAPO's argument), and its share is logged.                        (advantages)
  3. The loss at the forking token: with rho_g = pi_theta(f_g | x) / pi_old(f_g | x), pi_old the
     policy that sampled,
        L = -(1 / #kept rollouts) sum_g min(rho_g A_g, clip(rho_g, 1 - eps_low, 1 + eps_high) A_g)
            + beta * mean_x KL(pi_theta(. | x) || pi_ref(. | x)),
     the KL exact over the whole vocabulary at the forking position, pi_ref the initial model.
     Forward and backward cover the prompt and the tag up to the fork, one row per prompt, never
     the rollouts: that is the method's saving.                                         (gfpo_loss)
--mode grpo uses the same rollouts, rewards and advantages with the clipped objective on every
generated token (the forking token and the answer; the forced tag tokens are not the policy's),
normalised by the generated tokens of the kept groups of the global batch (DAPO's token mean), the
per-token log-probabilities from the fused loss, never the (T, V) logits.                (grpo_loss)
With --epochs 1 (the default) each batch of rollouts makes one update, so rho = 1 and the clip is
inert; --epochs E > 1 reuses the rollouts E times and the clip binds.

    python ssft.py && python gfpo.py                  # the toy: GFPO on the default SSFT model
    python ssft.py --mode mixed --out out/mixed && python gfpo.py --model out/mixed --shared-tag \\
        --mode grpo --out out/grpo                    # the paper's baseline: SFT + GRPO
    python gfpo.py --model runs/ssft32b --data dapo1k.jsonl --out runs/gfpo32b --batch 256 --steps 10 \\
        --lr 1e-6 --max-new 16384                     # the paper's setting as far as it is known
    torchrun --nproc_per_node=8 gfpo.py ...          # FSDP2; K ranks compute the same step as one
    python -m pytest -q test_gfpo.py
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import checkpoint
from batches import forward_rows, last_logits, logits_in_order
from data import DataError, encode, forking_tags, load_prompts, prompt_text, synthetic, tag_text
from data.chat import SYSTEM
from data.tokenizer import load_tokenizer, special_id
from distributed import build_model, gathered, setup_world
from eval import MATH_PROMPT, sample_all, seeded
from kernels import IGNORE_INDEX
from run import (Diverged, Progress, Run, RunConfig, Stop, UserError, adamw, arg, model_dir, parse_flags,
                 script, step_items, stopped, user_input)

# -------------------------------------------------------------------------------------------------
# The three steps


def advantages(rewards, eps=1e-6):
    """rewards (B, G) -> advantages (B, G) fp64 and kept (B,): (r - mean) / (std + eps) per group,
    std with Bessel's correction; a group of equal rewards is not kept (its advantages are 0)."""
    r = np.asarray(rewards, dtype=np.float64)
    kept = r.std(1) > 0
    adv = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + eps)
    return np.where(kept[:, None], adv, 0.0), kept


def clipped(logp, logp_old, adv, clip_low, clip_high):
    """The PPO objective per action, to be maximised: min(rho A, clip(rho, 1 - low, 1 + high) A)."""
    rho = torch.exp(logp - logp_old)
    return torch.minimum(rho * adv, rho.clamp(1 - clip_low, 1 + clip_high) * adv)


def gfpo_loss(logits, *, forks, logp_old, adv, tags, temperature, clip_low, clip_high, kl=0.0, ref_logits=None):
    """The summed GFPO loss of a pass (divide by the kept rollouts of the global batch): logits (B, V)
    at the forking token, with gradients; forks (B, G) tag indices drawn; logp_old, adv (B, G),
    adv 0 for dropped groups. Returns (policy-gradient sum, KL sum over prompts)."""
    logp = torch.log_softmax(logits[:, tags.fork_ids] / temperature, -1).gather(1, forks)  # (B, G)
    pg = -clipped(logp, logp_old, adv, clip_low, clip_high).sum()
    if not kl:
        return pg, logits.new_zeros(())
    logq, logr = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)  # (B, V)
    return pg, (logq.exp() * (logq - logr)).sum()  # exact KL(pi_theta || pi_ref), summed over prompts


def grpo_loss(nll, mask, *, logp_old, adv, clip_low, clip_high):
    """The summed GRPO loss of a pass (divide by the generated tokens of the global batch):
    nll (B, T) per-token NLL of the rollouts, mask (B, T) their generated tokens, logp_old (B, T),
    adv (B,) one advantage per rollout."""
    per_token = clipped(-nll, logp_old, adv[:, None], clip_low, clip_high)
    return -(per_token * mask).sum()


# -------------------------------------------------------------------------------------------------
# Configuration and prompts


@dataclass
class GFPOConfig(RunConfig):
    model: str = arg("out/ssft", "the model to start from: an ssft.py run directory or a HF checkpoint dir "
                                 "(a preset only with --plan)", kind="model")
    out: str = arg("out/gfpo", "run directory: metrics.jsonl, checkpoint/ (sharded), model/ (HF format)", kind="out")
    mode: str = arg("gfpo", "gfpo: the gradient at the forking token only; grpo: at every generated token",
                    choices=("gfpo", "grpo"))
    steps: int = arg(100, "steps: one batch of rollouts each", low=1)
    batch: int = arg(16, "prompts per step, across all ranks", low=1)
    group: int = arg(8, "G: rollouts per prompt", low=2)
    # Small steps: the gradient at the forking token moves weights that every answer token uses too
    # (see the README's GFPO results: at 3e-5 the answers of the 1M-parameter demo model degrade).
    lr: float = arg(1e-5, "peak learning rate", above=0)
    warmup: float = arg(0.1, "linear warm-up, as a fraction of --steps", low=0, below=1)
    weight_decay: float = arg(0.0, "AdamW weight decay on matrices", low=0)
    temperature: float = arg(0.7, "sampling temperature of the rollouts (and of the forking token)", above=0)
    top_p: float = arg(0.95, "nucleus of the rollouts' answers", above=0, high=1)
    max_new: int = arg(0, "new tokens per rollout (0: twice the longest synthetic solution; 4096 for math)", low=0)
    sample_batch: int = arg(256, "rollouts decoded at once: their KV cache (`gfpo.py --plan` says what fits)",
                            low=1)
    clip_low: float = arg(0.2, "clip the ratio below at 1 - this", low=0, below=1)
    clip_high: float = arg(0.28, "clip the ratio above at 1 + this (DAPO's clip-higher)", low=0)
    kl: float = arg(0.0, "beta: weight of the exact KL to the initial model at the forking token (gfpo)", low=0)
    epochs: int = arg(1, "updates on each batch of rollouts (more than 1 makes the clip bind)", low=1)
    shared_tag: bool = arg(False, "the model was trained with the one shared tag <think> (mixed): grpo only")
    train_questions: int = arg(synthetic.TRAIN_QUESTIONS, "synthetic task: ssft.py's training questions: the prompts",
                          low=1)
    eval_questions: int = arg(synthetic.HELD_OUT, "synthetic task: held-out questions evaluated at the end (0: none)",
                         low=0)


class Prompts:
    """The RL prompts, their gold answers and reward, the tokenizer and tags, all checked."""

    def __init__(self, cfg, world, tokenizer):
        if cfg.shared_tag and cfg.mode == "gfpo":
            raise UserError("--shared-tag: a model with one shared tag has no forking token; use --mode grpo")
        if cfg.kl and cfg.mode == "grpo":
            raise UserError(f"--kl {cfg.kl}: the exact KL is at the forking token, for --mode gfpo only")
        self.tok = load_tokenizer(tokenizer)
        if cfg.data == "synthetic":
            examples = synthetic.split(cfg.train_questions, cfg.eval_questions)[0]
            self.questions, self.golds = [ex.question for ex in examples], [ex.answer for ex in examples]
            self.kind = "synthetic"
            system, self.max_new = synthetic.SYSTEM, 2 * max(len(t) for ex in examples for t in ex.traces)
        else:
            prompts = load_prompts(cfg.data)
            self.kind = prompts[0].kind
            if any(p.kind != self.kind for p in prompts):
                raise DataError(cfg.data, None, None, "mixes math and code prompts; use one kind per file")
            self.questions = [MATH_PROMPT.format(question=p.question) if p.kind == "math" else p.question
                              for p in prompts]
            self.golds = [p.answer if p.kind == "math" else (p.tests, p.func_name) for p in prompts]
            system = SYSTEM
            self.max_new = 4096
        self.max_new = cfg.max_new or self.max_new
        self.ids = [encode(self.tok, prompt_text(q, system)) for q in self.questions]
        try:
            self.tags = forking_tags(self.tok, cfg.num_tags)
        except ValueError as e:
            raise UserError(f"--num-tags {cfg.num_tags}: {e}") from None
        self.shared = encode(self.tok, tag_text(None)) if cfg.shared_tag else None
        self.pad_id, self.stop = special_id(self.tok, "<|endoftext|>"), [special_id(self.tok, "<|im_end|>")]
        if cfg.batch > len(self.questions) or cfg.batch % world.size:
            raise UserError(f"--batch {cfg.batch}: must be at most the {len(self.questions)} prompts and a "
                            f"multiple of the {world.size} ranks")

    def reward(self, q, text):
        """1.0 if the response to prompt q is right, else 0.0: the one place rewards come from."""
        if self.kind == "synthetic":
            return float(synthetic.check(text, self.golds[q]))
        import rewards
        if self.kind == "math":
            return float(rewards.grade_math(text, self.golds[q]))
        tests, func_name = self.golds[q]
        return float(rewards.grade_code(rewards.extract_code(text), tests, func_name=func_name).passed)


# -------------------------------------------------------------------------------------------------
# The run


@torch.no_grad()
def rollouts(model, ref, prompts, qs, cfg, world, step):
    """For this rank's prompts qs: fork logits (B, V) of the sampling policy (and of the reference),
    forks (B, G) drawn, and the rollouts: (prefix ids, generated ids) per (prompt, g)."""
    B, G = len(qs), cfg.group
    rows = [prompts.ids[q] + (prompts.tags.prefix if prompts.shared is None else []) for q in qs]
    with gathered(model):
        logits = logits_in_order(model, rows, cfg.micro_tokens, world, prompts.pad_id)  # (B, V), row b = qs[b]
        ref_logits = logits_in_order(ref, rows, cfg.micro_tokens, world, prompts.pad_id) if ref is not None else None
        forks = torch.zeros(B, G, dtype=torch.long)
        if prompts.shared is None:
            probs = torch.softmax(logits[:, prompts.tags.fork_ids] / cfg.temperature, -1).cpu()  # (B, N)
            for b, q in enumerate(qs):
                for g in range(G):
                    forks[b, g] = torch.multinomial(probs[b], 1, generator=seeded(cfg.seed, step, q, g, 0))
        prefix = [prompts.shared or prompts.tags.ids[forks[b, g]] for b in range(B) for g in range(G)]
        gen = sample_all(model, [(prompts.ids[q], prefix[b * G + g], (cfg.seed, step, q, g, 1))
                                 for b, q in enumerate(qs) for g in range(G)],
                         temperature=cfg.temperature, top_p=cfg.top_p, max_new=prompts.max_new, stop=prompts.stop,
                         batch=cfg.sample_batch)
    return logits, ref_logits, forks, prefix, gen


def train(cfg, given):
    world = setup_world()
    run = Run(cfg, given, world)
    cfg = run.cfg
    if run.finished:
        return cfg, run
    if not model_dir(cfg.model).is_dir():
        raise UserError(f"--model {cfg.model}: RL starts from a trained model (a run or HF directory), not a preset")
    with user_input():
        source = model_dir(cfg.model)
        prompts = Prompts(cfg, world, run.checkpoint / "tokenizer.json" if run.state else cfg.tokenizer or source)
        model = build_model(world, source)
        ref = build_model(world, source).eval().requires_grad_(False) if cfg.kl else None
        model.gradient_checkpointing = cfg.activation_checkpointing
        opt = adamw(model, cfg.lr, cfg.weight_decay)
        if run.state:
            checkpoint.load(run.checkpoint, model, opt)
    run.open_metrics()
    if world.main:
        print(f"{len(prompts.questions)} prompts, {cfg.batch} x {cfg.group} rollouts a step, {cfg.mode}")
    stop, progress, tags, G = Stop(), Progress(cfg, run.start), prompts.tags, cfg.group
    try:
        for step in range(run.start, cfg.steps):
            t0 = time.time()
            qs = step_items(len(prompts.questions), cfg.batch, cfg.seed, step, world)
            # 1. rollouts, with the fork drawn from the N tags
            model.eval()
            logits, ref_logits, forks, prefix, gen = rollouts(model, ref, prompts, qs, cfg, world, step)
            # 2. rewards and group-normalised advantages
            texts = [prompts.tok.decode(ids, skip_special_tokens=True) for ids in gen]
            r = np.array([[prompts.reward(q, texts[b * G + g]) for g in range(G)] for b, q in enumerate(qs)])
            adv, kept = advantages(r)
            t_rollout = time.time() - t0
            # 3. the update(s), at the forking token (gfpo) or at every generated token (grpo)
            model.train()
            logp_old = torch.log_softmax(logits[:, tags.fork_ids] / cfg.temperature, -1).gather(
                1, forks.to(logits.device)) if cfg.mode == "gfpo" else None  # (B, G) of the sampling policy
            rows = None if cfg.mode == "gfpo" else grpo_rows(prompts, qs, prefix, gen, G, cfg.max_len)
            for epoch in range(cfg.epochs):
                stats = update(model, cfg, world, prompts, qs, forks, logp_old, adv, kept, ref_logits, rows)
                if cfg.mode == "grpo" and epoch == 0:
                    logp_old = stats.pop("logp")  # the sampling policy's, for the later epochs
                grad_norm = run.optimizer_step(model, opt, step, loss=stats["loss"])
            # log the step, save every --save-every steps, leave when asked to
            log = {"step": step + 1, "loss": stats["loss"], "kl": stats["kl"], "lr": opt.param_groups[0]["lr"],
                   "grad_norm": grad_norm, "rollout_seconds": t_rollout, "update_seconds": time.time() - t0 - t_rollout,
                   **step_stats(world, r, adv, kept, forks, logits, tags, prompts.shared is not None)}
            run.log(log)
            if world.main:
                progress.show(step, f"reward {log['reward']:.3f} | zero-variance {log['zero_variance']:.0%} | "
                                    f"loss {log['loss']:.4f} | rollouts {t_rollout:.1f}s")
            if run.end_step(step, stop, lambda n: run.save(model, opt, prompts.tok, n, {})):
                break
        run.finish(model, prompts.tok)
    finally:
        stop.restore()
        world.close()
    return cfg, run


def grpo_rows(prompts, qs, prefix, gen, G, max_len):
    """(ids, targets) of every rollout, targets on the policy's tokens only: the forking token
    (sampled) and the answer, not the prompt nor the forced rest of the tag."""
    rows = []
    for b, q in enumerate(qs):
        for g in range(G):
            p, tag, out = prompts.ids[q], prefix[b * G + g], gen[b * G + g]
            full = p + tag + out
            policy = set(range(len(p) + len(tag), len(full)))
            if prompts.shared is None:
                policy.add(len(p) + prompts.tags.fork)
            targets = [full[t + 1] if t + 1 in policy else IGNORE_INDEX for t in range(len(full) - 1)]
            rows.append((full[:-1][:max_len], targets[:max_len]))
    return rows


def update(model, cfg, world, prompts, qs, forks, logp_old, adv, kept, ref_logits, rows):
    """The gradients of one update; returns the global loss and KL (grpo: and the rollouts' log-probs,
    the sampling policy's for the later epochs)."""
    G, dev = cfg.group, world.device
    if cfg.mode == "gfpo":
        kept_rollouts, prompts_total = world.sum(int(kept.sum()) * G), world.sum(len(qs))
        fork_rows = [prompts.ids[q] + prompts.tags.prefix for q in qs]  # one row a prompt
        loss = kl = 0.0
        for g, logits in last_logits(model, fork_rows, cfg.micro_tokens, world, prompts.pad_id):
            if not g:  # an empty pass still joins FSDP's backward
                (logits.sum() * 0).backward()
                continue
            pg, kl_sum = gfpo_loss(logits, forks=forks[g].to(dev), logp_old=logp_old[g].to(dev),
                                   adv=torch.as_tensor(adv[g], dtype=torch.float32, device=dev), tags=prompts.tags,
                                   temperature=cfg.temperature, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                   kl=cfg.kl, ref_logits=ref_logits[g] if ref_logits is not None else None)
            (pg / max(kept_rollouts, 1) + cfg.kl * kl_sum / prompts_total).backward()
            loss, kl = loss + pg.item(), kl + kl_sum.item()
        return {"loss": world.sum(loss) / max(kept_rollouts, 1), "kl": world.sum(kl) / prompts_total}
    adv_rows = adv.reshape(-1)  # (B * G,) one advantage per rollout, in row order
    tokens = world.sum(sum(sum(t != IGNORE_INDEX for t in rows[i][1]) for i in range(len(rows)) if kept[i // G]))
    loss, logps = 0.0, [None] * len(rows)
    for g, nll, mask in forward_rows(model, rows, cfg.micro_tokens, world, prompts.pad_id, per_token=True):
        if not g:
            (nll.sum() * 0).backward()
            continue
        T = nll.shape[1]
        old = -nll.detach() if logp_old is None else \
            torch.stack([torch.nn.functional.pad(logp_old[i], (0, T - len(logp_old[i]))) for i in g])
        total = grpo_loss(nll, mask.float(), logp_old=old, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                          adv=torch.as_tensor(adv_rows[g], dtype=torch.float32, device=dev))
        (total / max(tokens, 1)).backward()
        loss += total.item()
        for j, i in enumerate(g):
            logps[i] = -nll[j, :len(rows[i][0])].detach()
    return {"loss": world.sum(loss) / max(tokens, 1), "kl": 0.0, "logp": logps}


def step_stats(world, r, adv, kept, forks, logits, tags, shared):
    """The step's rewards, zero-variance share and advantages, over all ranks; with forking tags
    also the reward of each tag and the tag distribution at the fork (mean probability of each tag,
    entropy among the tags, mass outside them)."""
    r_all, kept_all = np.concatenate(world.gather(r)), np.concatenate(world.gather(kept))
    adv_all = np.concatenate(world.gather(adv))[kept_all]
    stats = {"reward": float(r_all.mean()), "zero_variance": float(1 - kept_all.mean()),
             "advantage_abs_mean": float(np.abs(adv_all).mean()) if adv_all.size else 0.0,
             "advantage_max": float(np.abs(adv_all).max()) if adv_all.size else 0.0}
    if shared:
        return stats
    f_all = torch.cat(world.gather(forks)).numpy()
    p_tags = torch.cat(world.gather(torch.softmax(logits.float(), -1)[:, tags.fork_ids].cpu()))  # (B, N)
    within = p_tags / p_tags.sum(1, keepdim=True)
    return {**stats, "accuracy_per_tag": [float(r_all[f_all == i].mean()) if (f_all == i).any() else None
                                          for i in range(len(tags.ids))],
            "tag_probability": p_tags.mean(0).tolist(),
            "tag_entropy": float(-(within * within.clamp_min(1e-30).log()).sum(1).mean()),
            "outside_tags": float(1 - p_tags.sum(1).mean())}


def main(argv=None):
    try:
        try:
            cfg, given = parse_flags(GFPOConfig, argv, __doc__.split("\n\n")[0])
        except UserError as e:  # the embedded default continues `python ssft.py`: say so
            missing = str(e).startswith(f"--model {GFPOConfig.model}:") and not Path(GFPOConfig.model).exists()
            raise UserError(f"{e}; run `python ssft.py` first" if missing else str(e)) from None
        if cfg.plan:
            from plan import print_plan
            return print_plan(cfg)
        cfg, run = train(cfg, given)
    except (UserError, DataError, Diverged, checkpoint.SaveError) as e:
        sys.exit(f"error: {e}")
    if run.signum:
        stopped(run, "gfpo.py")
    if run.saved_step == cfg.steps and run.world.main and cfg.data == "synthetic" and cfg.eval_questions:
        from eval import SyntheticTask, evaluate_run
        evaluate_run(run.out, SyntheticTask(synthetic.split(cfg.train_questions, cfg.eval_questions)[1]), cfg.num_tags,
                     shared=cfg.shared_tag, samples=4, pass_samples=8)


if __name__ == "__main__":
    script(main)
