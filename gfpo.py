"""
Global Forking Policy Optimization (GFPO): reinforcement learning of which reasoning mode to open,
with the policy gradient at the global forking token only; and GRPO, its baseline.

After SSFT every tag <think{i}> opens its own mode of reasoning. GFPO learns, per question, which
one to open. Every step, for each prompt x of the batch:
  1. G rollouts. Rollout g draws its forking token (the tag's digit) f_g from the fork policy, the
     N tag tokens' logits z_x at the sampling temperature T (sampling.fork_policy),
        pi(i | x) = softmax(z_x[tag ids] / T)_i,
     then the rest of the tag is forced and the answer generated with the KV cache at the paper's
     T = 0.7, top-p 0.95. Each rollout is seeded by (seed, step, prompt, rollout), so any rank
     count draws the same ones.                                                          (rollouts)
  2. Rewards r_g in {0, 1}, the task's grade of the answer (tasks.py), and group-normalised
     advantages A_g = (r_g - mean r) / (std r + 1e-6), std with Bessel's correction, in fp64.
     A group whose rewards are all equal carries no signal: it is dropped from the loss and from
     its normaliser (DAPO's argument), and its share is logged.                        (advantages)
  3. The objective at the forking token: with rho_g = pi_theta(f_g | x) / pi_old(f_g | x), pi_old
     the policy that sampled (recorded by the rollouts),
        L = -(1 / #kept rollouts) sum_g min(rho_g A_g, clip(rho_g, 1 - eps_low, 1 + eps_high) A_g)
            + beta * (1 / #prompts) sum_x KL(pi_theta(. | x) || pi_ref(. | x)),
     the KL exact over the whole vocabulary at the forking position, pi_ref the initial model;
     #kept rollouts and #prompts count the global batch.                          (gfpo_objective)
     Forward and backward cover the prompt and the tag up to the fork, one row per prompt, never
     the rollouts: that is the method's saving.                                        (gfpo_update)
     The step moves every weight (--update all, as the paper), or the embedding row of the tag's
     opener alone (--update opener: the other weights carry the answers too).
--mode grpo uses the same rollouts, rewards and advantages with the clipped objective on every
generated token (the forking token and the answer; the forced tag tokens are not the policy's),
normalised by the generated tokens of the kept groups of the global batch (DAPO's token mean). Its
log-probabilities are those of the policy that sampled: the forking token's from the fork policy,
the answer's log softmax(z / T) from the fused loss on the hidden states / T, never the (T, V)
logits; like verl and TRL, the log-probability ignores top-p.       (grpo_objective, grpo_update)
--epochs 1 (the default): one update per batch of rollouts, rho = 1, the clip inert; E > 1 binds it.

    python ssft.py && python gfpo.py                  # the toy: GFPO on the default SSFT model
    python gfpo.py --data synthetic-short             # ... on the toy where the right mode depends on the question
    python ssft.py --mode mixed --out out/mixed && python gfpo.py --model out/mixed --shared-tag \\
        --mode grpo --out out/grpo                    # the paper's baseline: SFT + GRPO
    python gfpo.py --model runs/ssft32b --data dapo1k.jsonl --out runs/gfpo32b --batch 256 --steps 10 \\
        --update all --lr 1e-6 --max-new 16384        # the paper's setting as far as it is known
    torchrun --nproc_per_node=8 gfpo.py ...          # FSDP2; K ranks compute the same step as one
    python -m pytest -q test_gfpo.py
"""
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import checkpoint
from batches import forward_rows, last_logits
from data import DataError, synthetic
from data.tokenizer import load_tokenizer
from distributed import build_model, gathered, setup_world
from flags import UserError, arg, model_dir, parse_flags, user_input
from kernels import IGNORE_INDEX
from run import Diverged, Progress, Run, RunConfig, Stop, adamw, script, step_items, stopped
from sampling import chat_prompts, draw_forks, fork_logits, fork_policy, fork_statistics, sample
from tasks import load_task

# Rollouts stop at this many new tokens unless told (--max-new): the answer budget of a benchmark's
# evaluation (32768) would make one RL step hours long.
RL_MAX_NEW = 4096

# -------------------------------------------------------------------------------------------------
# The objective


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


def gfpo_objective(logits, *, forks, logp_old, adv, tags, temperature, clip_low, clip_high, kept_rollouts,
                   prompts, beta=0.0, ref_logits=None):
    """The share of L (the docstring's) of a micro-batch of B prompts, normalised by the global
    batch's kept_rollouts and prompts: logits (B, V) at the forking token, with gradients; forks,
    logp_old, adv (B, G), adv 0 for dropped groups; ref_logits (B, V) of pi_ref when beta > 0.
    Returns L's share and, detached for the log, the sum over these prompts of the KL."""
    logp = fork_policy(logits, tags, temperature).gather(1, forks)  # (B, G) log pi_theta(f_g | x)
    pg = -clipped(logp, logp_old, adv, clip_low, clip_high).sum()
    kl = logits.new_zeros(())
    if beta:
        logq, logr = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)  # (B, V)
        kl = (logq.exp() * (logq - logr)).sum()  # exact KL(pi_theta || pi_ref), summed over prompts
    return pg / max(kept_rollouts, 1) + beta * kl / prompts, kl.detach()


def grpo_objective(logp, mask, *, logp_old, adv, clip_low, clip_high, tokens):
    """The share of GRPO's loss of some policy tokens, normalised by the global batch's policy
    tokens: logp (B, T) their log pi_theta, with gradients; mask (B, T) which count (or 1.0: all);
    logp_old (B, T); adv (B, T) or (B, 1), each token its rollout's advantage."""
    return -(clipped(logp, logp_old, adv, clip_low, clip_high) * mask).sum() / max(tokens, 1)


# -------------------------------------------------------------------------------------------------
# Rollouts and the two updates


@dataclass
class Rollouts:
    """One step's rollouts on this rank: B prompts x G, every field indexed [b][g] or (B, G)."""
    qs: list  # (B,) the question index of each prompt (into the task)
    forks: torch.Tensor  # (B, G) the tag drawn at the forking token (0 with a shared tag)
    logp_old: torch.Tensor  # (B, G) log pi_old(fork | x) of the policy that sampled
    tag_ids: list  # [b][g] the ids of the forced tag
    generated: list  # [b][g] the generated ids after the tag
    rewards: np.ndarray  # (B, G)
    advantages: np.ndarray  # (B, G) fp64, 0 where the group is not kept
    kept: np.ndarray  # (B,) groups whose rewards differ
    fork_logits: torch.Tensor = None  # (B, V) of the sampling policy; None with a shared tag (no fork)
    ref_logits: torch.Tensor = None  # (B, V) of pi_ref, when beta > 0
    token_logp_old: list = None  # grpo with --epochs > 1: log pi_old of each row's tokens (grpo_rows)


@torch.no_grad()
def rollouts(model, ref, data, qs, cfg, world, step):
    """Steps 1 and 2 for this rank's questions qs: G rollouts each, their rewards and advantages."""
    B, G, prompts = len(qs), cfg.group, data.prompts
    logits = ref_logits = None
    forks, logp_old = torch.zeros(B, G, dtype=torch.long), torch.zeros(B, G)
    with gathered(model):
        if prompts.tags is not None:  # (a shared-tag model has no fork to draw)
            logits = fork_logits(model, prompts, qs, cfg.micro_tokens, world)  # (B, V), row b = qs[b]
            ref_logits = fork_logits(ref, prompts, qs, cfg.micro_tokens, world) if ref is not None else None
            log_pi = fork_policy(logits, prompts.tags, cfg.temperature)  # (B, N)
            forks = draw_forks(log_pi, [[(cfg.seed, step, q, g, 0) for g in range(G)] for q in qs])
            logp_old = log_pi.gather(1, forks.to(log_pi.device))
        tag_ids = [[prompts.slots[int(f)] for f in row] for row in forks]

        def job(b, g):  # rollout g of prompt b: the prompt, the forced tag, the seed
            return prompts.ids[qs[b]], tag_ids[b][g], (cfg.seed, step, qs[b], g, 1)

        generated = sample(model, (B, G), job, temperature=cfg.temperature, top_p=cfg.top_p, max_new=data.max_new,
                           stop=prompts.stop, batch=cfg.sample_batch)
    rewards = np.array([[data.task.grade(data.tok.decode(ids, skip_special_tokens=True), q) for ids in row]
                        for q, row in zip(qs, generated)], dtype=np.float64)
    adv, kept = advantages(rewards)
    ro = Rollouts(qs, forks, logp_old, tag_ids, generated, rewards, adv, kept, logits, ref_logits)
    if cfg.mode == "grpo" and cfg.epochs > 1:  # reused rollouts need pi_old per token (one epoch: rho = 1)
        ro.token_logp_old = token_logp(model, grpo_rows(ro, data, cfg.max_len), cfg, world, prompts.pad_id)
    return ro


def gfpo_update(model, ro, data, cfg, world):
    """The gradients of L for these rollouts: one row per prompt, its prompt and tag up to the
    forking token, forward and backward. Returns L and its KL term over the global batch."""
    kept_rollouts, prompts = world.sum(int(ro.kept.sum()) * cfg.group), world.sum(len(ro.qs))
    dev, L, kl = world.device, 0.0, 0.0
    before_fork = [data.prompts.before_fork(q) for q in ro.qs]
    for micro, logits in last_logits(model, before_fork, cfg.micro_tokens, world, data.prompts.pad_id):
        loss, kl_sum = gfpo_objective(
            logits, forks=ro.forks[micro].to(dev), logp_old=ro.logp_old[micro].to(dev),
            adv=torch.as_tensor(ro.advantages[micro], dtype=torch.float32, device=dev), tags=data.prompts.tags,
            temperature=cfg.temperature, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
            kept_rollouts=kept_rollouts, prompts=prompts, beta=cfg.beta,
            ref_logits=ro.ref_logits[micro] if ro.ref_logits is not None else None)
        loss.backward()
        L, kl = L + loss.item(), kl + kl_sum.item()
    return world.sum(L), world.sum(kl) / prompts


def grpo_rows(ro, data, max_len):
    """(ids, targets) of every rollout, [b][g] flattened in row-major order, targets on its answer
    only: not the prompt nor the tag (the forking token is the fork policy's, grpo_update's)."""
    return [((p + tag + gen)[:-1][:max_len], ([IGNORE_INDEX] * (len(p) + len(tag) - 1) + gen)[:max_len])
            for p, tags, gens in zip([data.prompts.ids[q] for q in ro.qs], ro.tag_ids, ro.generated)
            for tag, gen in zip(tags, gens)]


@torch.no_grad()
def token_logp(model, rows, cfg, world, pad_id):
    """log-probabilities (T,) of every row's targets at the sampling temperature (0 where none)."""
    out = [None] * len(rows)
    for micro, nll, _ in forward_rows(model, rows, cfg.micro_tokens, world, pad_id, per_token=True,
                                      temperature=cfg.temperature):
        for j, i in enumerate(micro):
            out[i] = -nll[j, :len(rows[i][0])]
    return out


def grpo_update(model, ro, data, cfg, world):
    """The gradients of GRPO's loss for these rollouts, forward and backward: the forking token's
    term from one row per prompt (as gfpo_update), then every rollout for its answer's. Returns the
    loss over the global batch (and 0.0: no KL)."""
    rows, tags, dev, L = grpo_rows(ro, data, cfg.max_len), data.prompts.tags, world.device, 0.0
    kept = np.repeat(ro.kept, cfg.group)  # (B * G,) in the rows' order
    adv = torch.as_tensor(ro.advantages, dtype=torch.float32)  # (B, G)
    forks = int(ro.kept.sum()) * cfg.group if tags else 0  # the kept groups' forking tokens
    answers = sum(sum(t != IGNORE_INDEX for t in targets) for (_, targets), k in zip(rows, kept) if k)
    clip = dict(clip_low=cfg.clip_low, clip_high=cfg.clip_high, tokens=world.sum(forks + answers))
    if tags:  # log pi_theta(f | x) of the tag-restricted policy at T, from which the rollouts drew f
        before_fork = [data.prompts.before_fork(q) for q in ro.qs]
        for micro, logits in last_logits(model, before_fork, cfg.micro_tokens, world, data.prompts.pad_id):
            logp = fork_policy(logits, tags, cfg.temperature).gather(1, ro.forks[micro].to(dev))  # (B, G)
            loss = grpo_objective(logp, 1.0, logp_old=ro.logp_old[micro].to(dev), adv=adv[micro].to(dev), **clip)
            loss.backward()
            L += loss.item()
    for micro, nll, mask in forward_rows(model, rows, cfg.micro_tokens, world, data.prompts.pad_id, per_token=True,
                                         temperature=cfg.temperature):  # nll, mask (B, T): the answers at T
        old = -nll.detach() if ro.token_logp_old is None else \
            torch.nn.utils.rnn.pad_sequence([ro.token_logp_old[i] for i in micro], batch_first=True)  # (B, T)
        loss = grpo_objective(-nll, mask.float(), logp_old=old, adv=adv.view(-1)[micro, None].to(dev), **clip)
        loss.backward()
        L += loss.item()
    return world.sum(L), 0.0


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
    lr: float = arg(0.0, "peak learning rate (0: 1e-2 when GFPO moves the opener alone, 1e-5 when all weights move)",
                    low=0)
    warmup: float = arg(0.1, "linear warm-up, as a fraction of --steps", low=0, below=1)
    weight_decay: float = arg(0.0, "AdamW weight decay on matrices", low=0)
    temperature: float = arg(0.7, "sampling temperature of the rollouts (and of the forking token)", above=0)
    top_p: float = arg(0.95, "nucleus of the rollouts' answers", above=0, high=1)
    max_new: int = arg(0, f"new tokens per rollout (0: the task's, at most {RL_MAX_NEW}: twice the longest "
                          f"synthetic solution; {RL_MAX_NEW} for math and code)", low=0)
    sample_batch: int = arg(256, "rollouts decoded at once: their KV cache (`gfpo.py --plan` says what fits)",
                            low=1)
    clip_low: float = arg(0.2, "clip the ratio below at 1 - this", low=0, below=1)
    clip_high: float = arg(0.28, "clip the ratio above at 1 + this (DAPO's clip-higher)", low=0)
    beta: float = arg(0.0, "weight of the exact KL to the initial model at the forking token (gfpo)", low=0)
    epochs: int = arg(1, "updates on each batch of rollouts (more than 1 makes the clip bind)", low=1)
    # Every weight the fork's logits depend on carries the answers too; the opener's row ("<think"; "ink"
    # in Qwen2.5's vocabulary) reaches them only through attention to one position. On the toy (README)
    # `opener` moved the choice further on the plain task but broke the favoured tag's answers on 2 of 3
    # seeds of synthetic-short: `all`, the paper's reading, stays the default.
    update: str = arg("all", "gfpo: the weights it moves: all, or opener: the input embedding row of the tag's "
                             "token before the forking token, alone", choices=("all", "opener"))
    shared_tag: bool = arg(False, "the model was trained with the one shared tag <think> (mixed): grpo only")
    train_questions: int = arg(synthetic.TRAIN_QUESTIONS, "synthetic task: ssft.py's training questions: the prompts",
                               low=1)
    eval_questions: int = arg(synthetic.HELD_OUT, "synthetic task: held-out questions evaluated at the end (0: none)",
                              low=0)


class PromptSet:
    """What a run learns from, checked against the flags before anything is written: the task (its
    questions and grading, tasks.py), the tokenizer, the prompts as ids with their tags, the
    rollouts' length."""

    def __init__(self, cfg, world, tokenizer):
        if cfg.shared_tag and cfg.mode == "gfpo":
            raise UserError("--shared-tag: a model with one shared tag has no forking token; use --mode grpo")
        if cfg.beta and cfg.mode == "grpo":
            raise UserError(f"--beta {cfg.beta}: the exact KL is at the forking token, for --mode gfpo only")
        if cfg.update == "opener" and (cfg.mode == "grpo" or cfg.weight_decay):  # decay would shrink every row
            raise UserError("--update opener: for --mode gfpo only, and without --weight-decay")
        self.task = load_task(cfg.data, split="train", train_questions=cfg.train_questions,
                              held_out=cfg.eval_questions)
        self.tok = load_tokenizer(tokenizer)
        try:
            self.prompts = chat_prompts(self.tok, self.task, cfg.num_tags, cfg.shared_tag)
        except ValueError as e:
            raise UserError(f"--num-tags {cfg.num_tags}: {e}") from None
        self.max_new = cfg.max_new or min(self.task.max_new, RL_MAX_NEW)
        if cfg.batch > len(self.task.questions) or cfg.batch % world.size:
            raise UserError(f"--batch {cfg.batch}: must be at most the {len(self.task.questions)} prompts and a "
                            f"multiple of the {world.size} ranks")


# -------------------------------------------------------------------------------------------------
# The run


def train(cfg, given):
    world = setup_world()
    if not cfg.lr:  # one row learns at a rate that would wreck the whole model
        cfg = replace(cfg, lr=1e-2 if cfg.update == "opener" else 1e-5)
    with Run(cfg, given, world) as run:  # holds the run directory until the run ends
        cfg = run.cfg
        if run.finished:
            return cfg, run
        if not model_dir(cfg.model).is_dir():
            raise UserError(f"--model {cfg.model}: RL starts from a trained model (a run or HF directory), "
                            "not a preset")
        with user_input():
            source = model_dir(cfg.model)
            data = PromptSet(cfg, world, run.checkpoint / "tokenizer.json" if run.state else cfg.tokenizer or source)
            model = build_model(world, source)
            ref = build_model(world, source, verified=True).eval().requires_grad_(False) if cfg.beta else None
            model.gradient_checkpointing = cfg.activation_checkpointing
            mask = opener_only(model, data.prompts.tags) if cfg.update == "opener" else None
            opt = adamw(model, cfg.lr, cfg.weight_decay)
            if run.state:
                checkpoint.load(run.checkpoint, model, opt)
        run.open_metrics()
        if world.main:
            print(f"{len(data.task.questions)} prompts, {cfg.batch} x {cfg.group} rollouts a step, {cfg.mode}")
        update = gfpo_update if cfg.mode == "gfpo" else grpo_update
        stop, progress = Stop(), Progress(cfg, run.start)
        try:
            for step in range(run.start, cfg.steps):
                t0 = time.time()
                qs = step_items(len(data.task.questions), cfg.batch, cfg.seed, step, world)  # this rank's questions
                # 1-2. rollouts, the fork drawn from the N tags, with their rewards and advantages
                model.eval()
                ro = rollouts(model, ref, data, qs, cfg, world, step)
                t_rollout = time.time() - t0
                # 3. the update(s), at the forking token (gfpo) or at every generated token (grpo)
                model.train()
                for _ in range(cfg.epochs):
                    loss, kl = update(model, ro, data, cfg, world)
                    if mask is not None:
                        model.model.embed_tokens.weight.grad.mul_(mask)
                    grad_norm = run.optimizer_step(model, opt, step, loss=loss)
                # log the step, save every --save-every steps, leave when asked to
                log = {"step": step + 1, "loss": loss, "kl": kl, "lr": opt.param_groups[0]["lr"],
                       "grad_norm": grad_norm, "rollout_seconds": t_rollout,
                       "update_seconds": time.time() - t0 - t_rollout,
                       **step_stats(world, ro, data.prompts.tags)}
                run.log(log)
                if world.main:
                    progress.show(step, f"reward {log['reward']:.3f} | zero-variance {log['zero_variance']:.0%} | "
                                        f"loss {log['loss']:.4f} | rollouts {t_rollout:.1f}s")
                if run.end_step(step, stop, lambda n: run.save(model, opt, data.tok, n, {})):
                    break
            run.finish(model, data.tok)
        finally:
            stop.restore()
            world.close()
    return cfg, run


def opener_only(model, tags):
    """Freeze every weight but the input embedding; returns the mask (V, 1) that keeps its gradient
    to the row of the token before the forking token ("<think"), which only the tags contain."""
    weight = model.requires_grad_(False).model.embed_tokens.weight.requires_grad_(True)
    mask = torch.zeros(weight.shape[0], 1, device=weight.device)
    mask[tags.ids[0][tags.fork - 1]] = 1.0
    if hasattr(weight, "device_mesh"):  # FSDP2: a DTensor, sharded as the weight is
        from torch.distributed.tensor import distribute_tensor
        mask = distribute_tensor(mask, weight.device_mesh, weight.placements)
    return mask


def step_stats(world, ro, tags):
    """The step's rewards, zero-variance share and advantages, over all ranks; with forking tags
    also the reward of each tag and the fork's statistics (sampling.fork_statistics)."""
    r_all, kept_all = np.concatenate(world.gather(ro.rewards)), np.concatenate(world.gather(ro.kept))
    adv_all = np.concatenate(world.gather(ro.advantages))[kept_all]
    stats = {"reward": float(r_all.mean()), "zero_variance": float(1 - kept_all.mean()),
             "advantage_abs_mean": float(np.abs(adv_all).mean()) if adv_all.size else 0.0,
             "advantage_max": float(np.abs(adv_all).max()) if adv_all.size else 0.0}
    if tags is None:
        return stats
    f_all = torch.cat(world.gather(ro.forks)).numpy()
    return {**stats, "accuracy_per_tag": [float(r_all[f_all == i].mean()) if (f_all == i).any() else None
                                          for i in range(len(tags.ids))],
            "tag_distribution": fork_statistics(ro.fork_logits, tags, world)}


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
    if run.saved_step == cfg.steps and run.world.main and cfg.data in synthetic.TASKS and cfg.eval_questions:
        from eval import evaluate_run  # the demo ends with the report on the held-out questions
        evaluate_run(run.out, load_task(cfg.data, train_questions=cfg.train_questions, held_out=cfg.eval_questions),
                     cfg.num_tags, shared_tag=cfg.shared_tag)


if __name__ == "__main__":
    script(main)
