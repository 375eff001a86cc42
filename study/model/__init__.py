"""The Conformer-CTC encoder written for pruning, its size accounting and its export."""
from study.model.conformer import (
    BlockWidths,
    ConformerCTC,
    dense_widths,
    output_lengths,
)

__all__ = ["BlockWidths", "ConformerCTC", "dense_widths", "output_lengths"]
