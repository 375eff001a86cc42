"""Training a CTC model: AdamW, warm-up + cosine decay, clipping, per-epoch checkpoints.

A checkpoint is written atomically after every epoch; `fit` resumes from it when present, with
the same batches and dropout draws as an uninterrupted run (both are seeded by epoch). SIGTERM
(study/runtime/stop_request.py) writes one at the next step boundary instead, holding the random generators'
states, the epoch's running sums and any state carried within the epoch (the ADL noise pool), so the
resumed run skips the steps already taken and goes on with exactly the draws it would have made.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from study.runtime import progress, stop_request
from study.config import Config
from study.data.batching import Batch, make_batches, normalise, pad_batch, prefetch
from study.data.features import SpecAugment
from study.data.prepared import SplitData
from study.data.tokenizer import Tokenizer
from study.durable import replace_durably
from study.runtime.distributed import rank_and_world, weight_gap_to_rank0
from study.method.distillation import Distiller
from study.sweep.timing import MIN_STEP_SECONDS
from study.model import output_lengths

LOSS_CHECK_EVERY = 25  # steps between host syncs on a GPU (the finiteness check and the progress bar)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss); the message says where."""


@dataclass
class History:
    epoch: int = 0  # epochs finished
    train_seconds: float = 0.0
    records: list[dict] = field(default_factory=list)
    rank_weight_gap: float | None = None  # under DDP: the largest gap between a rank's parameters and rank 0's


def resolve_device(name: str) -> torch.device:
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if device.type == "cuda" and device.index is None:  # "cuda" means the current GPU; name it
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def use_device(device: torch.device) -> None:
    """Pins this process to its GPU (so nothing lands on GPU 0 by default) and lets fp32 matrix
    products use TF32 there; the mixed-precision paths are bf16 already."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))


CONSTANT_WARMUP = 0.1  # longest warm-up, as a fraction of all steps, of a group on the constant schedule


def lr_lambda(total_steps: int, warmup_fraction: float, decay: bool = True) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero (or, without `decay`, the peak rate to the end)."""
    warmup = max(1, round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not decay:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def batch_frames(cfg: Config) -> int:
    """Feature frames per batch: train.batch_seconds of audio at the feature hop."""
    return round(cfg.train.batch_seconds * 1000 / cfg.features.hop_ms)


def feasible(lengths: list[int], targets: list[list[int]], subsampling: int) -> list[int]:
    """Indices whose target fits in the encoder's output frames (CTC needs T >= S + repeats)."""
    frames = output_lengths(torch.tensor(lengths), subsampling).tolist()
    return [i for i, (t, ids) in enumerate(zip(frames, targets))
            if t >= len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))]


def compile_blocks(model: torch.nn.Module) -> None:
    """Regional compilation: each Conformer block compiled in place (dynamic: every batch has its own
    length). The blocks share their code, so one compilation serves all of them; the whole model as
    one graph took minutes to compile at 16 blocks. Parameter names stay as they are."""
    for block in model.encoder.blocks:
        block.compile(dynamic=True)


class PhaseClock:
    """Host wall time per phase of the training steps (`benchmarks/gpu_throughput.py --phases`): where
    the host spends a step. A phase that waits for the device (a sync) absorbs the device's lag."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """Charges the time since the previous mark to `phase`."""
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


class Trainer:
    def __init__(self, cfg: Config, model: torch.nn.Module, train: SplitData, tokenizer: Tokenizer, mean: torch.Tensor,
                 std: torch.Tensor, checkpoint_path: Path, device: torch.device, epochs: int | None = None,
                 param_groups: list[dict] | None = None, regulariser: Callable[[float], torch.Tensor] | None = None,
                 on_step: Callable[[float], None] | None = None,
                 on_epoch_start: Callable[[int], None] | None = None, checkpointed: dict[str, torch.Tensor] | None = None,
                 epoch_state: EpochState | None = None, distiller: Distiller | None = None, distributed: bool = True):
        """`regulariser(t)` (t = fraction of training done) is added to the CTC loss at every step;
        `on_step(t)` runs before each step's forward pass; `on_epoch_start(epoch)` right after the epoch's
        seed is set (state carried across epochs, such as a noise pool, restarts from that seed there);
        `param_groups` replace the single AdamW group (e.g. for the ADL logits); `checkpointed` tensors
        outside the model (e.g. the budget controller's multipliers) are saved and restored with it;
        `epoch_state` is state carried within an epoch that a checkpoint taken mid-epoch must hold (e.g.
        the noise pool, which `on_epoch_start` resets); `distiller` adds the dense teacher's term to the loss
        (study/method/distillation.py); `distributed` False trains in this process alone even under torchrun (rank 0's fine-tuning)."""
        self.checkpointed, self.epoch_state, self.distiller = checkpointed or {}, epoch_state, distiller
        if distiller:
            distiller.watch(model)  # its block outputs, for a block-output term
        self.partial: dict | None = None  # a mid-epoch checkpoint's position, consumed by train_epoch
        self.cfg, self.model, self.device = cfg, model.to(device), device
        self.epochs = epochs if epochs is not None else cfg.train.epochs
        self.regulariser, self.on_step, self.on_epoch_start = regulariser, on_step, on_epoch_start
        self.train_data, self.mean, self.std = train, mean.to(device), std.to(device)
        self.rank, self.world = rank_and_world() if distributed else (0, 1)
        step_model = self.model
        if self.world > 1:  # gradients averaged over the ranks, each holding its share of the global batch
            hard_phase = cfg.method == "adaptive_dropout" and cfg.adl.hard_phase > 0
            step_model = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                                                 find_unused_parameters=hard_phase)  # frozen logits get no gradient
        if cfg.train.compile:
            compile_blocks(self.model)
        self.step_model = step_model
        self.checkpoint_path = Path(checkpoint_path)
        self.targets = [tokenizer.encode(t) for t in train.transcripts]  # (S_i,) unit ids per utterance
        self.train_indices = feasible(train.lengths, self.targets, cfg.model.subsampling)
        if not self.train_indices:
            raise TrainingError("no training utterance is long enough for its transcript after "
                                f"{cfg.model.subsampling}x subsampling")
        self.skipped = len(train.utterances) - len(self.train_indices)
        self.max_frames = batch_frames(cfg)
        self.steps_per_epoch = len(self._epoch_batches(0))
        self.total_steps = self.steps_per_epoch * self.epochs
        groups = param_groups or [{"params": list(model.parameters())}]
        # fused: one kernel for all parameters instead of a Python loop (a fifth of a CPU step otherwise)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
        # A group may ask for {"schedule": "constant"} (the ADL logits, the controller's multipliers):
        # warm-up, then no decay. They must answer c(t) and the budget from early on, so their warm-up
        # is the weights' capped at CONSTANT_WARMUP (short runs want a long one for the weights).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            lr_lambda(self.total_steps, cfg.train.warmup_fraction) if group.get("schedule", "shared") == "shared"
            else lr_lambda(self.total_steps, min(cfg.train.warmup_fraction, CONSTANT_WARMUP), decay=False)
            for group in self.optimizer.param_groups])
        self.spec_augment = SpecAugment(cfg.features)
        self.ctc = torch.nn.CTCLoss(blank=0, reduction="mean", zero_infinity=False)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.history = History()
        self.clock: PhaseClock | None = None  # set to time the phases of each step

    def _batches(self, shuffle_seed: int | None, indices: list[int] | None = None) -> list[list[int]]:
        """Length-bucketed batches of `indices` (default: every trainable utterance), as indices into the
        training split."""
        indices = self.train_indices if indices is None else indices
        lengths = [self.train_data.lengths[i] for i in indices]
        return [[indices[i] for i in b] for b in make_batches(lengths, self.max_frames, shuffle_seed)]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches; under DDP each rank's share of each (every rank needs one
        utterance or more per step, so global batches smaller than the world are left out)."""
        batches = self._batches(shuffle_seed=self.cfg.train.seed * 1000 + epoch)
        if self.world > 1:
            batches = [b[self.rank::self.world] for b in batches if len(b) >= self.world]
        return batches

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:  # unreadable: would fail every attempt
            aside = self.checkpoint_path.with_name(self.checkpoint_path.name + ".corrupt")
            self.checkpoint_path.replace(aside)
            print(f"{self.checkpoint_path}: unreadable ({type(exc).__name__}: {str(exc)[:200]}); moved to {aside.name}, "
                  "training starts over", flush=True)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.partial = state.get("partial")
        with torch.no_grad():
            for name, tensor in self.checkpointed.items():
                tensor.copy_(state["extra"][name])
        return True

    def save_checkpoint(self, partial: dict | None = None) -> None:
        """`partial`: where in an unfinished epoch training stopped (see `_stop_mid_epoch`)."""
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "history": self.history, "partial": partial,
                 "extra": {name: tensor.detach().clone() for name, tensor in self.checkpointed.items()}}
        replace_durably(self.checkpoint_path, lambda tmp: torch.save(state, tmp))  # never a torn checkpoint

    def _stop_mid_epoch(self, epoch: int, steps_done: int, sums: torch.Tensor, utterances: int, seconds: float) -> None:
        """SIGTERM arrived: checkpoint after `steps_done` steps of `epoch`, then stop."""
        self.save_checkpoint({"epoch": epoch, "step": steps_done, "sums": sums.cpu(), "utterances": utterances,
                              "seconds": seconds, "rng": _generator_states(self.device),
                              "epoch_state": self.epoch_state.state_dict() if self.epoch_state else None})
        raise stop_request.Stopped(f"stopped by SIGTERM at epoch {epoch + 1}, step {steps_done}; checkpointed")

    def _resume_mid_epoch(self, epoch: int) -> tuple[int, torch.Tensor | None, int, float]:
        """(steps already taken, running sums, utterances, seconds) of this epoch from a mid-epoch checkpoint,
        with the generators and the epoch's state put back where they were; (0, None, 0, 0) otherwise."""
        partial, self.partial = self.partial, None
        if not partial or partial["epoch"] != epoch:
            return 0, None, 0, 0.0
        _restore_generators(partial["rng"], self.device)
        if self.epoch_state:
            self.epoch_state.load_state_dict(partial["epoch_state"])
        return partial["step"], partial["sums"].to(self.device), partial["utterances"], partial["seconds"]

    def device_batches(self, batches: list[list[int]], augment: bool = True) -> Iterator[tuple[Batch, torch.Tensor]]:
        """The input pipeline: batches padded (and pinned, for a GPU) ahead in a background thread, copied
        without blocking, then normalised and augmented on the device: (batch, (B, T, F) features)."""
        pin = self.device.type == "cuda"
        make = lambda indices: pad_batch(indices, self.train_data.features, self.targets, pin=pin)  # noqa: E731
        for host_batch in prefetch(batches, make, background=pin):
            batch = host_batch.to(self.device)
            feats = normalise(batch.features, batch.feature_lengths, self.mean, self.std)
            yield batch, self.spec_augment(feats) if augment else feats

    def sample(self, max_utterances: int, seed: int) -> Iterator[tuple[Batch, torch.Tensor]]:
        """A seeded random sample of `max_utterances` training utterances (every one when there are fewer),
        as evaluation sees them (no SpecAugment): (batch, (B, T, F) features). Random, so its lengths follow
        the corpus's (the first batches in length order would be the shortest utterances only)."""
        count = min(max_utterances, len(self.train_indices))
        sample = sorted(random.Random(seed).sample(self.train_indices, count))
        return self.device_batches(self._batches(None, sample), augment=False)

    def sample_batches(self, max_utterances: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`sample`'s ((B, T, F) features, (B,) lengths)."""
        for batch, feats in self.sample(max_utterances, seed):
            yield feats, batch.feature_lengths

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        torch.manual_seed(self.cfg.train.seed * 1000 + epoch + 7919 * self.rank)  # dropout and SpecAugment draws
        random.seed(self.cfg.train.seed * 1000 + epoch)
        if self.on_epoch_start:
            self.on_epoch_start(epoch)
        batches = self._epoch_batches(epoch)
        first, resumed_sums, total_utts, seconds_before = self._resume_mid_epoch(epoch)
        # The host waits for the device only every `check_every` steps (on the CPU that wait is free).
        check_every = LOSS_CHECK_EVERY if self.device.type == "cuda" else 1
        sums = torch.zeros(3, device=self.device) if resumed_sums is None else resumed_sums  # CTC, regulariser, distillation: summed over utterances
        start = time.perf_counter() - seconds_before
        bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                   leave=False, disable=None)
        mark = self.clock.mark if self.clock else lambda phase: None
        mark("epoch start")
        for step, (batch, feats) in enumerate(self.device_batches(batches[first:]), start=first):
            step_started = time.monotonic()
            mark("data")
            t = (epoch * self.steps_per_epoch + step) / self.total_steps  # fraction of training done
            if self.on_step:
                self.on_step(t)  # e.g. the ADL temperature: set before this step's forward pass
            with self.autocast:
                log_probs, out_lengths = self.step_model(feats, batch.feature_lengths)
            mark("forward")
            ctc = self.ctc(log_probs.float().transpose(0, 1), batch.targets, out_lengths, batch.target_lengths)
            reg = self.regulariser(t) if self.regulariser else torch.zeros((), device=self.device)
            distill = (self.distiller.loss(feats, batch.feature_lengths, log_probs.float(), out_lengths)
                       if self.distiller else torch.zeros((), device=self.device))
            loss = ctc + reg + distill
            mark("loss")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mark("backward")
            if self.cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip, foreach=True)
            self.optimizer.step()
            self.scheduler.step()
            mark("optimizer")
            sums += torch.stack([ctc.detach(), reg.detach().to(self.device), distill.detach()]) * len(batch.indices)
            total_utts += len(batch.indices)
            bar.update()
            if (step + 1) % check_every == 0 or step + 1 == len(batches):
                ctc_sum, reg_sum, distill_sum = sums.tolist()  # the one host sync
                if not math.isfinite(ctc_sum + reg_sum + distill_sum):
                    raise TrainingError(f"non-finite CTC loss at epoch {epoch + 1}, by step {step + 1} "
                                        f"(summed CTC {ctc_sum}, regulariser {reg_sum})")
                bar.set_postfix(loss=f"{(ctc_sum + reg_sum + distill_sum) / total_utts:.3f}",
                                utt_s=f"{total_utts / (time.perf_counter() - start):.1f}")
            mark("bookkeeping")
            if MIN_STEP_SECONDS:
                time.sleep(max(0.0, MIN_STEP_SECONDS - (time.monotonic() - step_started)))
            progress.beat()
            if stop_request.requested() and self.world == 1 and step + 1 < len(batches):
                bar.close()
                self._stop_mid_epoch(epoch, step + 1, sums, total_utts, time.perf_counter() - start)
        bar.close()
        if self.world > 1:  # the whole global batch's figures, not this rank's share
            totals = torch.tensor([ctc_sum, reg_sum, distill_sum, total_utts], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(totals)
            ctc_sum, reg_sum, distill_sum, total_utts = totals.tolist()
        ctc_mean, reg_mean, distill_mean = ctc_sum / total_utts, reg_sum / total_utts, distill_sum / total_utts
        return {"train/loss": ctc_mean + reg_mean + distill_mean, "train/ctc": ctc_mean, "train/reg": reg_mean,
                **({"train/distill": distill_mean} if self.distiller else {}), "train/seconds": time.perf_counter() - start}

    def fit(self, evaluate_dev: Callable[[], dict[str, float]],
            on_epoch_end: Callable[[int, dict[str, float]], None]) -> History:
        """Trains the remaining epochs; after each, evaluates, reports metrics, then checkpoints (under
        DDP rank 0 alone evaluates, reports and checkpoints; the others wait in the next step). In one
        process, SIGTERM stops it at the next step boundary with a checkpoint (under DDP the ranks' generators
        differ: a stop there interrupts at once and the run resumes from its last epoch)."""
        with stop_request.polite() if self.world == 1 else contextlib.nullcontext():
            history = self._fit(evaluate_dev, on_epoch_end)
        if self.world > 1:
            history.rank_weight_gap = weight_gap_to_rank0(self.model)
        return history

    def _fit(self, evaluate_dev: Callable[[], dict[str, float]],
             on_epoch_end: Callable[[int, dict[str, float]], None]) -> History:
        for epoch in range(self.history.epoch, self.epochs):
            metrics = self.train_epoch(epoch)
            metrics["train/lr"] = self.scheduler.get_last_lr()[0]
            self.history.epoch = epoch + 1
            self.history.train_seconds += metrics["train/seconds"]
            if self.rank:
                continue
            metrics.update(evaluate_dev())
            self.history.records.append(metrics)
            on_epoch_end(epoch + 1, metrics)  # reported first: a kill in between repeats an epoch, loses none
            self.save_checkpoint()
            if stop_request.requested():  # asked in the epoch's last step or its evaluation
                raise stop_request.Stopped(f"stopped by SIGTERM after epoch {epoch + 1}; checkpointed")
        return self.history


class EpochState(Protocol):
    """State carried within an epoch (reset at its start), saved by a mid-epoch checkpoint."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _generator_states(device: torch.device) -> dict:
    """Every generator a training step draws from: torch's CPU one (dropout, SpecAugment and noise offsets
    on the CPU), the device's, and Python's."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _restore_generators(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if states["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
