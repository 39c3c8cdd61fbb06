"""
What every training run shares, whatever its algorithm (ssft.py, gfpo.py):

- the flags every trainer has (`RunConfig`; flags.py parses and checks them);
- the run directory (`Run`), held by one run at a time (integrity.hold): a new run, a resumed one
  (same settings, except the few that `RESUMABLE` lists, from a checkpoint whose every file
  matches its checksum), refusal to overwrite an unfinished run, and metrics.jsonl, one JSON object
  a step, cut back to the checkpoint's step on resume (a line cut short by a crash is dropped);
- the data order (`step_items`), the learning-rate schedule (`lr_at`), AdamW with weight decay on
  matrices only (`adamw`);
- stopping cleanly (`Stop`): SIGTERM, SIGUSR1 or Ctrl-C finish the current step, then every rank
  saves and leaves together; a non-finite loss or gradient norm stops the run before the
  optimizer steps (`check_finite`), so that no diverged weights are ever saved;
- the progress line with rate and ETA.

    python -m pytest -q test_run.py
"""
import gc
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import checkpoint
import integrity
from flags import UserError, arg, check_flags


@dataclass
class RunConfig:
    """The flags every trainer has; ssft.py and gfpo.py add their own and their defaults."""
    model: str = arg("demo", "a preset (model.PRESETS, trained from scratch), a HF checkpoint dir or a run dir",
                     kind="model")
    data: str = arg("synthetic", "'synthetic' (the demo task), 'synthetic-short' (its variant where the shortest "
                                 "strategy is right) or a JSONL file", kind="data")
    tokenizer: str = arg("", "tokenizer.json; default: the model's, or trained on the synthetic task", kind="file")
    out: str = arg("out/run", "run directory: metrics.jsonl, checkpoint/ (sharded), model/ (HF format)", kind="out")
    steps: int = arg(400, "optimizer steps", low=1)
    batch: int = arg(16, "questions per step, across all ranks", low=1)
    num_tags: int = arg(6, "N forking tags <think1>..<thinkN>", low=2)
    max_len: int = arg(4096, "training sequences are truncated to this many tokens", low=2)
    micro_tokens: int = arg(4096, "padded tokens per forward pass; more is accumulated", low=1)
    lr: float = arg(3e-3, "peak learning rate", above=0)
    min_lr: float = arg(0.1, "final learning rate of the cosine, as a fraction of --lr", low=0, high=1)
    warmup: float = arg(0.05, "linear warm-up, as a fraction of --steps", low=0, below=1)
    weight_decay: float = arg(0.1, "AdamW weight decay on matrices", low=0)
    grad_clip: float = arg(1.0, "clip the global gradient norm to this", above=0)
    seed: int = arg(0, "seeds initialisation, data order and sampling", low=0)
    save_every: int = arg(0, "also checkpoint every this many steps (0: only at the end)", low=0)
    resume: bool = arg(False, "continue the run in --out from its checkpoint, exactly")
    overwrite: bool = arg(False, "discard an unfinished run in --out instead of refusing")
    stop_after: int = arg(0, "leave after this many steps of this invocation (then --resume)", low=0)
    activation_checkpointing: bool = arg(False, "recompute each block in backward to save memory")
    cpu_offload: bool = arg(False, "FSDP2 CPU offload: the sharded fp32 weights, gradients and AdamW state in host "
                                   "memory, the optimizer step on the CPU (plan.py's 'AC + offload')")
    export_dtype: str = arg("bfloat16", "dtype of the Hugging Face export out/model at the end",
                            choices=("bfloat16", "float16", "float32"))
    plan: bool = arg(False, "print the per-GPU memory plan for --model and --world-size, then exit")
    world_size: int = arg(8, "--plan only: number of GPUs", low=1)


def step_items(n, batch, seed, step, world):
    """This rank's share of a step's items: a contiguous slice of a per-epoch permutation that
    depends only on (seed, step), so resuming and changing the rank count keep the data order."""
    epoch, k = divmod(step, n // batch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return np.array_split(order[k * batch:(k + 1) * batch], world.size)[world.rank].tolist()


# Settings a resumed run may change: its length and learning rate (e.g. lower after a divergence)
# and how it saves and spends memory. Anything else would make it another run. The flags of one
# invocation (PER_CALL) are never taken from the saved run.
RESUMABLE = ("steps", "lr", "save_every", "micro_tokens", "activation_checkpointing", "cpu_offload", "export_dtype")
PER_CALL = ("resume", "overwrite", "out", "stop_after")


class Run:
    """A run and its directory: the checkpoint and metrics.jsonl, whether it is new, and what every
    step does after its algorithm (the optimizer step, logging, saving, stopping). Used as a
    context (`with Run(...) as run:`), it holds the directory for the run (integrity.hold)."""

    def __init__(self, cfg, given, world):
        self.out = Path(cfg.out)
        self.world = world
        self.lock, self.held = None, world.broadcast(self.out.is_dir())  # a new directory: held once made
        try:
            if self.held:
                self.lock = integrity.hold(self.out, world)
            self._read(cfg, given)
        except integrity.Busy as e:
            raise UserError(str(e)) from None
        except BaseException:
            self.release()
            raise
        world.offload = self.cfg.cpu_offload  # the run's own setting (a resumed run's: its saved one)
        self.metrics = self.out / "metrics.jsonl"
        self.signum = None  # the stop signal the run left on, if any

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def release(self):
        if self.lock:
            self.lock.close()
            self.lock = None

    def _read(self, cfg, given):
        """The checkpoint in the directory, and the run it says this one is."""
        world = self.world
        ckpt = checkpoint.recover(self.out) if world.main and self.held else None
        ckpt = world.broadcast(str(ckpt) if ckpt else None)
        self.checkpoint = Path(ckpt) if ckpt else None
        self.start = 0
        if cfg.resume:
            if not self.checkpoint:
                raise UserError(f"--resume: no checkpoint in {self.out}")
            self.state = self._verified_state()
            saved = self.state["config"]
            for name in sorted(given - set(RESUMABLE) - set(PER_CALL)):
                if saved.get(name) != getattr(cfg, name):
                    raise UserError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: the run in {self.out} has "
                                    f"{saved.get(name)}; a resumed run keeps its settings except "
                                    + ", ".join("--" + r.replace("_", "-") for r in RESUMABLE))
            self.cfg = type(cfg)(**{**saved, **{k: getattr(cfg, k) for k in (given & set(RESUMABLE)) | set(PER_CALL)}})
            check_flags(self.cfg)
            self.start = self.saved_step = self.state["step"]
            if self.finished and world.main:
                print(f"{self.out}: the run is finished ({self.start} of {self.cfg.steps} steps); "
                      "pass --steps N to train longer")
        else:
            self.cfg = cfg
            try:
                state = checkpoint.read_state(self.checkpoint) if self.checkpoint and not cfg.overwrite else None
            except ValueError as e:
                raise UserError(f"{self.out} holds a damaged checkpoint ({e}): pass --overwrite to discard "
                                "it") from None
            if state and state["step"] < state["config"]["steps"]:
                raise UserError(f"{self.out} holds an unfinished run (step {state['step']} of "
                                f"{state['config']['steps']}): pass --resume to continue it or "
                                "--overwrite to discard it")
            self.state = self.checkpoint = self.saved_step = None  # replaced by this run's first save

    def _verified_state(self):
        """The trainer state of the checkpoint once every file of it matches its checksum."""
        try:
            if not checkpoint.verify(self.checkpoint, self.world) and self.world.main:
                print(f"warning: {self.checkpoint} was written before checkpoints carried checksums: "
                      "it is used unchecked", file=sys.stderr)
            return checkpoint.read_state(self.checkpoint)
        except ValueError as e:  # integrity.Damaged, or a trainer state that does not parse
            raise UserError(f"{e}. This checkpoint cannot be used, and no earlier one is kept (each save "
                            f"replaces the last): restore {self.checkpoint} from a copy, or start again with "
                            "--overwrite") from None

    @property
    def finished(self):
        return self.start >= self.cfg.steps

    def open_metrics(self):
        """Create the directory and metrics.jsonl (rank 0): empty for a new run; for a resumed
        one, the lines up to the checkpoint's step (any line that does not parse is dropped). A
        directory that this run creates is held from now on; if another run started at the same
        time took it first, or has already written there, this one stops before writing."""
        if not self.held:
            if self.world.main:
                self.out.mkdir(parents=True, exist_ok=True)
            try:
                self.lock, self.held = integrity.hold(self.out, self.world), True
            except integrity.Busy as e:
                raise UserError(str(e)) from None
            taken = self.world.main and ((self.out / "checkpoint").exists() or self.metrics.exists())
            if self.world.broadcast(taken):
                raise UserError(f"{self.out}: another run started there at the same time as this one and has "
                                "written to it; choose another --out (or --resume that run)")
        if not self.world.main:
            return
        kept = [r for r in read_metrics(self.metrics) if r["step"] <= self.start] if self.state else []
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
        tmp.rename(self.metrics)

    def log(self, record):
        if self.world.main:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, model, opt, tokenizer, step, extra):
        checkpoint.save(self.out, model, opt, tokenizer,
                        {"step": step, "config": asdict(self.cfg), **extra}, self.world)
        self.checkpoint = self.out / "checkpoint"
        self.saved_step = step

    def optimizer_step(self, model, opt, step, **values):
        """Set the schedule's learning rate of `step`, clip the global gradient norm to --grad-clip
        and step the optimizer, unless the norm or one of `values` (the loss) is not finite: then
        Diverged, before anything changed. Returns the norm before clipping."""
        cfg = self.cfg
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr=cfg.lr, steps=cfg.steps, warmup=cfg.warmup, min_lr=cfg.min_lr)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor under FSDP
        check_finite(step, self, grad_norm=norm, **values)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return norm

    def end_step(self, step, stop, save):
        """Save (save(step count)) on a stop signal, every --save-every steps, at the last step and
        at --stop-after. Returns whether to leave the loop now: a stop signal (kept in
        self.signum) or --stop-after."""
        cfg, steps_done = self.cfg, step + 1
        self.signum = stop.requested(self.world)
        leave = bool(self.signum) or bool(cfg.stop_after) and steps_done - self.start >= cfg.stop_after
        if leave or steps_done == cfg.steps or (cfg.save_every and steps_done % cfg.save_every == 0):
            save(steps_done)
        return leave

    def finish(self, model, tokenizer):
        """At the end of the run, the Hugging Face export out/model (--export-dtype)."""
        if self.saved_step == self.cfg.steps:
            dtype = getattr(torch, self.cfg.export_dtype)
            checkpoint.export_hf(model, tokenizer, self.out / "model", self.world, dtype)


def read_metrics(path):
    """The records of a metrics.jsonl, in order ([] where there is none). Lines that are not a JSON
    object with a step, as a crash or a full disk can leave, are skipped: this is the one reader."""
    records = []
    for line in (Path(path).read_text(errors="replace").splitlines() if Path(path).exists() else []):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def lr_at(step, *, lr, steps, warmup, min_lr):
    """Linear warm-up over a `warmup` fraction of the steps, then cosine decay to min_lr * lr."""
    warm = max(1, round(warmup * steps))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def adamw(model, lr, weight_decay):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # biases and norm gains
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


class Stop:
    """Turns SIGTERM, SIGUSR1 and SIGINT into a request to stop after the current step. A second
    Ctrl-C stops at once. `requested(world)` is collective: every rank stops at the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.signum is None:
            print(f"\n{signal.Signals(signum).name}: stopping after this step", file=sys.stderr, flush=True)
            self.signum = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once

    def requested(self, world):
        got = [s for s in world.gather(self.signum) if s is not None]
        return got[0] if got else None

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Diverged(Exception):
    pass


def check_finite(step, run, **values):
    """Raise Diverged (before the optimizer steps) if any value is NaN or infinite."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        last = (f"the last checkpoint is {run.checkpoint} (step {run.saved_step})" if run.checkpoint
                else "no checkpoint was saved")
        raise Diverged(f"step {step + 1}: " + ", ".join(f"{k} is {v}" for k, v in bad.items())
                       + f"; the optimizer did not step and nothing was saved; {last}. Resume from it with a "
                         f"lower learning rate: --resume --lr {run.cfg.lr / 10:g}")


def script(main):
    """Run a trainer's main() as the script. The FSDP model's reference cycles are freed here, while
    the process is whole: left to interpreter shutdown, they are torn down after the process group
    and abort the process now and then ("terminate called without an active exception")."""
    try:
        main()
    finally:
        gc.collect()


def stopped(run, script):
    """Leave after a stop signal, the checkpoint saved: say how to continue; exit 128 + signal."""
    print(f"stopped by signal {run.signum} after step {run.saved_step}: saved {run.checkpoint}; "
          f"continue with: python {script} --out {run.out} --resume", file=sys.stderr)
    sys.exit(128 + run.signum)


class Progress:
    def __init__(self, cfg, start):
        self.cfg, self.start, self.t0 = cfg, start, time.time()

    def show(self, step, text):
        """Print about 50 lines a run: step, `text`, rate and ETA."""
        this_call = step + 1 - self.start  # steps of this invocation
        rate = this_call / max(time.time() - self.t0, 1e-9)
        eta = (self.cfg.steps - step - 1) / rate
        if this_call % max(1, self.cfg.steps // 50) == 0 or step + 1 == self.cfg.steps:
            print(f"step {step + 1:>5}/{self.cfg.steps} | {text} | {rate:.2f} step/s | "
                  f"eta {int(eta // 60)}m{int(eta % 60):02d}s", flush=True)
