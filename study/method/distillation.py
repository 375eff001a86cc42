"""Distillation from the dense model while a pruned model trains (adl.distill, prune.distill).

The loss is KL(teacher || student) between the two models' CTC posteriors, frame by frame, averaged over
the utterances' real frames. Pruning never changes the front end, so both run at the same frame rate.
The teacher sees the student's input (SpecAugment included) in inference mode, and costs one forward pass
of the dense model per step.
"""
from __future__ import annotations

import torch


def frame_kl(student: torch.Tensor, teacher: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over real frames of sum_v p_t(v) (log p_t(v) - log q_t(v)); (B, T, V) log-probabilities, (B,) frames."""
    real = torch.arange(student.shape[1], device=student.device) < lengths.to(student.device)[:, None]  # (B, T)
    per_frame = (teacher.exp() * (teacher - student)).sum(-1)  # (B, T)
    return (per_frame * real).sum() / real.sum().clamp(min=1)


class Distiller:
    """The dense teacher, frozen, and the weight of its term in the loss."""

    def __init__(self, teacher: torch.nn.Module, weight: float):
        self.teacher, self.weight = teacher.eval().requires_grad_(False), weight

    def loss(self, features: torch.Tensor, lengths: torch.Tensor, student_log_probs: torch.Tensor,
             student_lengths: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_log_probs, _ = self.teacher(features, lengths)  # (B, T', V)
        return self.weight * frame_kl(student_log_probs, teacher_log_probs.float(), student_lengths)
