"""Unit importance from a calibration sample of training utterances: the structured baselines beyond weight
magnitude (methods activation_structured and taylor_structured; prune.calibration_utterances).

  activation  a unit's outgoing weights' norm times the norm of its activation over the sample's real
              frames: Wanda's and FLAP's weight-times-activation score, per unit. FFN hidden unit j:
              ||W2[:, j]|| ||h_j||; value dimension i: ||Wo[:, i]|| ||a_i||; conv channel c:
              ||W_out[:, c]|| ||h_c||; query/key dimension i: ||q_i|| ||k_i||, the size of its term in the
              attention logits.
  taylor      first-order Taylor (Molchanov et al. 2019): the sum over a unit's weights of |w * dL/dw|, the
              CTC loss's gradient on each calibration batch, summed over the batches.

Both rank the same units as study/method/baselines.py's weight norms, in the same pools, and feed the same
exact physical pruning (`structured_plan(..., scores=...)`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from study.method.baselines import unit_sums
from study.model.conformer import ConformerCTC, output_lengths, padding_mask

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # ((B, T, F) normalised features, (B,) lengths)


class _SquaredActivations:
    """Forward hooks summing, per unit, the squares of a block's activations over real frames."""

    def __init__(self, model: ConformerCTC):
        self.sums: list[dict[str, torch.Tensor]] = [{} for _ in model.encoder.blocks]
        self.lengths: torch.Tensor | None = None  # (B,) frames after the front end, of the batch in flight
        self.handles = []
        for b, block in enumerate(model.encoder.blocks):
            watched = {"ffn1": (block.ffn1.w2, True), "ffn2": (block.ffn2.w2, True), "value": (block.mhsa.wo, True),
                       "conv": (block.conv.pointwise_out, True), "q": (block.mhsa.wq, False), "k": (block.mhsa.wk, False)}
            for name, (module, reads_input) in watched.items():
                hook = self._adder(b, name)
                self.handles.append(module.register_forward_pre_hook(lambda m, args, hook=hook: hook(args[0]))
                                    if reads_input else module.register_forward_hook(lambda m, args, out, hook=hook: hook(out)))

    def _adder(self, block: int, name: str) -> Callable[[torch.Tensor], None]:
        def add(x: torch.Tensor) -> None:  # (B, T, n)
            real = padding_mask(self.lengths, x.shape[1])[..., None]  # (B, T, 1)
            squares = (x.float().pow(2) * real).sum((0, 1))  # (n,)
            sums = self.sums[block]
            sums[name] = sums[name] + squares if name in sums else squares
        return add

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def activation_scores(model: ConformerCTC, batches: Batches) -> list[dict[str, torch.Tensor]]:
    """Per block and unit group (ffn1, ffn2, query, value, conv): each unit's weight-times-activation score."""
    was_training = model.training
    model.eval()
    squares = _SquaredActivations(model)
    try:
        for feats, lengths in batches:
            squares.lengths = output_lengths(lengths, model.encoder.subsampling.factor)
            model(feats, lengths)
    finally:
        squares.remove()
        model.train(was_training)
    scores = []
    for block, sums in zip(model.encoder.blocks, squares.sums):
        norm = {name: s.sqrt() for name, s in sums.items()}
        scores.append({
            "ffn1": block.ffn1.w2.weight.norm(dim=0) * norm["ffn1"],
            "ffn2": block.ffn2.w2.weight.norm(dim=0) * norm["ffn2"],
            "query": norm["q"] * norm["k"],
            "value": block.mhsa.wo.weight.norm(dim=0) * norm["value"],
            "conv": block.conv.pointwise_out.weight.norm(dim=0) * norm["conv"],
        })
    return [{g: s.cpu() for g, s in groups.items()} for groups in scores]


def taylor_scores(model: ConformerCTC, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                  ctc: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Per block and unit group: each unit's first-order Taylor score. `batches`: (features (B, T, F),
    lengths (B,), targets, target lengths), as the CTC loss `ctc` takes them."""
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model that is pruned
    saliency = {p: torch.zeros_like(p) for p in model.parameters()}
    try:
        for feats, lengths, targets, target_lengths in batches:
            model.zero_grad(set_to_none=True)
            log_probs, out_lengths = model(feats, lengths)
            ctc(log_probs.float().transpose(0, 1), targets, out_lengths, target_lengths).backward()
            with torch.no_grad():
                for p, total in saliency.items():
                    if p.grad is not None:
                        total += (p * p.grad).abs()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return unit_sums(model, lambda weight: saliency[weight])

