"""Distillation from the dense model while a pruned model trains (adl.distill, prune.distill, and the
block-output terms adl.distill_hidden, prune.distill_hidden).

The output term is KL(teacher || student) between the two models' CTC posteriors, frame by frame,
averaged over the utterances' real frames. The block-output term (layer-wise distillation, as Jiang et
al. 2023 and DPHuBERT add to their L0 pruning) is the mean squared error between the student's and the
teacher's outputs of chosen Conformer blocks, per frame over the d_model dimensions, averaged over real
frames and over the blocks. Pruning never changes the front end or d_model, so both run at the same
frame rate and width. The teacher sees the student's input (SpecAugment included) in inference mode,
and costs one forward pass of the dense model per step.
"""
from __future__ import annotations

import torch


def frame_kl(student: torch.Tensor, teacher: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over real frames of sum_v p_t(v) (log p_t(v) - log q_t(v)); (B, T, V) log-probabilities, (B,) frames."""
    real = torch.arange(student.shape[1], device=student.device) < lengths.to(student.device)[:, None]  # (B, T)
    per_frame = (teacher.exp() * (teacher - student)).sum(-1)  # (B, T)
    return (per_frame * real).sum() / real.sum().clamp(min=1)


def frame_mse(student: torch.Tensor, teacher: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over real frames of the mean squared difference over the last dimension; (B, T, D), (B,) frames."""
    real = torch.arange(student.shape[1], device=student.device) < lengths.to(student.device)[:, None]  # (B, T)
    per_frame = (student.float() - teacher.float()).pow(2).mean(-1)  # (B, T)
    return (per_frame * real).sum() / real.sum().clamp(min=1)


class BlockOutputs:
    """The outputs of chosen Conformer blocks of a model, kept by forward hooks from its latest forward pass."""

    def __init__(self, model: torch.nn.Module, blocks: list[int]):
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [model.encoder.blocks[i].register_forward_hook(self._keeper(i)) for i in blocks]

    def _keeper(self, i: int):
        def keep(module, inputs, output: torch.Tensor) -> None:
            self.outputs[i] = output  # (B, T', d_model)
        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class Distiller:
    """The dense teacher, frozen, and the weights of its terms in the loss: `weight` for the output KL,
    `hidden` for the block outputs of `blocks` (all blocks when empty). A weight of 0 adds no term and no
    hook, so it trains bit-identically to no teacher term at all."""

    def __init__(self, teacher: torch.nn.Module, weight: float, hidden: float = 0.0, blocks: list[int] | None = None):
        self.teacher, self.weight, self.hidden = teacher.eval().requires_grad_(False), weight, hidden
        self.blocks = list(blocks or range(len(teacher.encoder.blocks)))
        self.teacher_blocks = BlockOutputs(teacher, self.blocks) if hidden else None
        self.student_blocks: BlockOutputs | None = None

    def watch(self, student: torch.nn.Module) -> None:
        """Keeps `student`'s block outputs from now on (a trainer calls this for the model it trains)."""
        if self.student_blocks:
            self.student_blocks.remove()
        self.student_blocks = BlockOutputs(student, self.blocks) if self.hidden else None

    def loss(self, features: torch.Tensor, lengths: torch.Tensor, student_log_probs: torch.Tensor,
             student_lengths: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_log_probs, _ = self.teacher(features, lengths)  # (B, T', V)
        loss = self.weight * frame_kl(student_log_probs, teacher_log_probs.float(), student_lengths) if self.weight \
            else torch.zeros((), device=student_log_probs.device)
        if self.hidden:
            mse = [frame_mse(self.student_blocks.outputs[i], self.teacher_blocks.outputs[i], student_lengths)
                   for i in self.blocks]
            loss = loss + self.hidden * torch.stack(mse).mean()
        return loss


def distiller_for(teacher: torch.nn.Module | None, weight: float, hidden: float, blocks: list[int]) -> Distiller | None:
    """The teacher's terms a trial asked for, or None when it asked for none."""
    return Distiller(teacher, weight, hidden, blocks) if teacher is not None and (weight or hidden) else None
