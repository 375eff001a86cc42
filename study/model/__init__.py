from study.model.conformer import ConformerCTC, output_lengths

__all__ = ["ConformerCTC", "output_lengths"]
