from study.model.conformer import BlockWidths, ConformerCTC, output_lengths

__all__ = ["BlockWidths", "ConformerCTC", "output_lengths"]
