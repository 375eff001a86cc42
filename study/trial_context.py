"""What every method of one trial shares: its data and feature statistics, device and folder; building
a seeded model; training with per-epoch dev figures logged to MLflow; error rates on a split."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from study.config import Config, ModelConfig
from study.data.prepared import SplitData
from study.data.tokenizer import Tokenizer
from study.evaluation.error_rates import error_rates
from study.method.adl_controller import AdlController
from study.model import BlockWidths, ConformerCTC
from study.method.distillation import Distiller
from study.training import Trainer, batch_frames


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, vocab_size: int, model_cfg: ModelConfig | None = None,
                widths: list[BlockWidths] | None = None) -> ConformerCTC:
    """The trial's model (or one of other widths), initialised from the trial's seed."""
    torch.manual_seed(cfg.train.seed)
    return ConformerCTC(model_cfg or cfg.model, cfg.features.n_mels, vocab_size, widths)


@dataclass
class TrialContext:
    cfg: Config
    data: dict[str, SplitData]
    tokenizer: Tokenizer  # the CTC output units
    mean: torch.Tensor  # (n_mels,) training-set feature statistics
    std: torch.Tensor
    device: torch.device
    folder: Path  # the trial's folder: checkpoints, DONE

    def error_rates(self, model: torch.nn.Module, split: str) -> tuple[float, float, list[str]]:
        return error_rates(model, self.data[split], self.tokenizer, self.mean, self.std, self.device,
                           batch_frames(self.cfg))

    def trainer(self, model: torch.nn.Module, checkpoint: str, epochs: int | None = None, **kwargs) -> Trainer:
        return Trainer(self.cfg, model, self.data["train"], self.tokenizer, self.mean, self.std,
                       self.folder / checkpoint, self.device, epochs=epochs, **kwargs)

    def fit(self, trainer: Trainer, prefix: str = "", step_offset: int = 0, adl: AdlController | None = None) -> float:
        """Trains (resuming from the trainer's checkpoint) with per-epoch dev figures; returns seconds."""
        trainer.load_checkpoint()
        mlflow.set_tag(f"{prefix}resumed_from_epoch", str(trainer.history.epoch))
        if trainer.partial:  # a SIGTERM's checkpoint, taken mid-epoch
            mlflow.set_tag(f"{prefix}resumed_from_step", f"{trainer.partial['step']} of epoch {trainer.partial['epoch'] + 1}")
        model = trainer.model

        def evaluate() -> dict[str, float]:
            wer, cer, _ = self.error_rates(model, "dev")
            return {"dev/wer": wer, "dev/cer": cer}

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if adl:
                metrics.update(adl.epoch_metrics(epoch / trainer.epochs))
            mlflow.log_metrics({prefix + k: v for k, v in metrics.items()}, step=step_offset + epoch)
            kept = "".join(f"  kept {k.rsplit('/', 1)[1]} {v:.0%}" for k, v in metrics.items() if "kept_fraction" in k)
            print(f"{prefix}epoch {epoch}: loss {metrics['train/loss']:.3f}  dev WER {metrics['dev/wer']:.2%}  "
                  f"CER {metrics['dev/cer']:.2%}{kept}  ({metrics['train/seconds']:.0f} s)", flush=True)

        history = trainer.fit(evaluate, log_epoch)
        if history.rank_weight_gap is not None:
            mlflow.log_metric(f"{prefix}train/rank_weight_gap", history.rank_weight_gap)
            if history.rank_weight_gap > 0:
                print(f"warning: the ranks ended training with different weights (largest gap "
                      f"{history.rank_weight_gap:.3g}); DDP should keep them identical", flush=True)
        return history.train_seconds

    def finetune(self, model: torch.nn.Module, epochs: int, distiller: Distiller | None = None) -> float:
        """An ablation for every pruning method: a few epochs after pruning (with the dense teacher's term when
        given), logged as finetune/*."""
        if not epochs:
            return 0.0
        trainer = self.trainer(model, "finetune.pt", epochs=epochs, distiller=distiller,
                               distributed=False)  # rank 0 alone, after pruning
        seconds = self.fit(trainer, "finetune/", self.cfg.train.epochs)
        model.eval()
        return seconds
