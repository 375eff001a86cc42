"""Save and load an exported (possibly pruned) model: weights plus the shapes that rebuild it.

Loading needs only the model code: no ADL, no training code, and `weights_only=True`.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from study.config import ModelConfig
from study.model.conformer import BlockWidths, ConformerCTC


def save_model(path: str | Path, cfg: ModelConfig, model: ConformerCTC, widths: list[BlockWidths],
               extra: dict[str, torch.Tensor] | None = None) -> None:
    torch.save({"model_config": asdict(cfg), "widths": [asdict(w) for w in widths], "n_mels": model.n_mels,
                "vocab_size": model.head.out_features, "state_dict": model.state_dict(), **(extra or {})}, path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ConformerCTC, dict]:
    """Returns the model in eval mode and the whole saved dict (e.g. feature statistics)."""
    saved = torch.load(path, map_location=map_location, weights_only=True)
    model_config, widths = saved_shapes(saved)
    model = ConformerCTC(model_config, saved["n_mels"], saved["vocab_size"], widths)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def saved_shapes(saved: dict) -> tuple[ModelConfig, list[BlockWidths]]:
    """The model settings and block widths a saved dict rebuilds its model with."""
    model_config = {"front_end": "conv2d", **saved["model_config"]}  # files from before the knob had only conv2d
    return ModelConfig(**model_config), [BlockWidths(**w) for w in saved["widths"]]
