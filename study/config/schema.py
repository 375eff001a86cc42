"""The typed configuration of one trial: dataclasses with defaults and the ranges each key accepts.

Ranges live in field metadata (`min`, `max`, `choices`) so the checks stay next to the field; the
TOML reader (study/config/toml_io.py) enforces them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from study.config.synthetic import SyntheticConfig
from study.names import BASELINES, LOCATIONS, METHODS


def knob(default: Any, *, min: float | None = None, max: float | None = None,
         choices: tuple | None = None, factory: bool = False) -> Any:
    meta = {"min": min, "max": max, "choices": choices}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FsddConfig:
    split_by: str = knob("index", choices=("index", "speaker"))
    dev_indices: list[int] = knob(lambda: list(range(5, 10)), factory=True)
    test_indices: list[int] = knob(lambda: list(range(0, 5)), factory=True)
    dev_speakers: list[str] = knob(lambda: ["nicolas"], factory=True)
    test_speakers: list[str] = knob(lambda: ["theo"], factory=True)


@dataclass
class DataConfig:
    source: str = knob("synthetic", choices=("synthetic", "librispeech", "fsdd"))
    root: str = ""  # data set folder for librispeech and fsdd
    cache_dir: str = "runs/cache"  # corpus and feature caches; relative to the working directory
    train_subsets: list[str] = knob(lambda: ["train-clean-100"], factory=True)  # librispeech
    dev_subsets: list[str] = knob(lambda: ["dev-clean"], factory=True)
    test_subsets: list[str] = knob(lambda: ["test-clean"], factory=True)
    extra_test_subsets: list[str] = knob(list, factory=True)  # librispeech: each reported as <subset>/wer, /cer
    max_train_seconds: float = knob(30.0, min=0.5)  # longer training utterances are skipped
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    fsdd: FsddConfig = field(default_factory=FsddConfig)


@dataclass
class FeatureConfig:
    n_mels: int = knob(80, min=8)
    win_ms: float = knob(25.0, min=5)
    hop_ms: float = knob(10.0, min=1)
    freq_masks: int = knob(1, min=0)  # SpecAugment, training only
    freq_mask_width: int = knob(10, min=0)
    time_masks: int = knob(1, min=0)
    time_mask_width: int = knob(10, min=0)  # frames
    # vocal tract length perturbation: each training utterance's mel axis stretched by a factor drawn
    # from [1 - freq_warp, 1 + freq_warp] (0 = off; 0.1 is the usual range)
    freq_warp: float = knob(0.0, min=0.0, max=0.5)
    # speed perturbation (Ko et al. 2015): the training split gains one copy of every utterance per
    # factor, its audio resampled so tempo and pitch both move ([0.9, 1.1] as Kaldi's recipes; [] = off)
    speed_perturb: list[float] = knob(list, min=0.5, max=2.0, factory=True)


@dataclass
class TextConfig:
    """The CTC output units: characters, or BPE subwords trained on the training transcripts."""
    units: str = knob("bpe", choices=("char", "bpe"))
    bpe_vocab_size: int = knob(128, min=8)  # sentencepiece pieces (the blank comes on top)


@dataclass
class ModelConfig:
    d_model: int = knob(96, min=8)
    num_heads: int = knob(4, min=1)
    ffn_dim: int = knob(384, min=1)
    conv_channels: int = knob(96, min=1)  # channels after the GLU in the conv module
    conv_kernel: int = knob(15, min=1)
    num_blocks: int = knob(4, min=1)
    subsampling: int = knob(8, choices=(4, 8))  # front-end frame-rate reduction (8: FastConformer-style)
    subsampling_channels: int = knob(256, min=1)  # README: the main recipe
    # conv1d: mel bins as channels, 8x only, about a sixth of conv2d's multiply-adds (README: the main recipe)
    front_end: str = knob("conv1d", choices=("conv2d", "conv1d"))
    dropout: float = knob(0.1, min=0.0, max=0.9)
    attention_dropout: float = knob(0.0, min=0.0, max=0.9)  # on attention weights; slow on the CPU
    scale_input: bool = True  # multiply front-end output by sqrt(d_model) before adding positions
    # per-utterance normalisation of the input features inside the model (so it travels with an export):
    # none; utterance_mean: each bin minus its mean over the utterance (CMN); utterance: mean and variance
    input_norm: str = knob("none", choices=("none", "utterance_mean", "utterance"))

    def validate(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.num_heads ({self.num_heads})")
        if self.front_end == "conv1d" and self.subsampling != 8:
            raise ValueError(f"model.front_end = \"conv1d\" needs model.subsampling = 8, got {self.subsampling}")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"model.conv_kernel must be odd (same-length output), got {self.conv_kernel}")


@dataclass
class TrainConfig:
    epochs: int = knob(18, min=1)
    batch_seconds: float = knob(48.0, min=1.0)  # audio seconds per batch (length-bucketed); README: the main recipe
    lr: float = knob(4e-3, min=0.0)
    weight_decay: float = knob(1e-2, min=0.0)
    warmup_fraction: float = knob(0.3, min=0.0, max=1.0)  # of all steps, then cosine decay
    grad_clip: float = knob(5.0, min=0.0)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = knob(0, min=0)  # CPU threads; 0 = every core this process may use
    compile: bool = False  # torch.compile each Conformer block (pays off on a GPU)
    processes: int = knob(1, min=1)  # > 1: DistributedDataParallel over this many processes (study/distributed.py)


@dataclass
class AdlConfig:
    """Adaptive dropout (METHOD.md section 1); used when method = "adaptive_dropout"."""
    locations: list[str] = knob(lambda: ["ffn", "mhsa", "conv"], choices=LOCATIONS, factory=True)
    alpha: float = knob(1e-2, min=0.0)  # penalty weight of the regulariser
    tau: float = knob(1.0, min=1e-3)  # Gumbel-sigmoid temperature
    tau_end: float = knob(0.0, min=0.0)  # > 0: anneal tau geometrically to this by the end
    threshold: float = knob(0.5, min=0.0, max=1.0)
    inference: str = knob("expected", choices=("expected", "hard"))
    mask_granularity: str = knob("frame", choices=("frame", "utterance"))
    # pooled: logistic noise drawn in bulk and reused at random offsets (a fifth of the generator's work,
    # study/method/noise.py); fresh: drawn anew for every element
    noise: str = knob("pooled", choices=("pooled", "fresh"))
    straight_through: bool = False
    # gumbel_sigmoid: the paper's relaxed Bernoulli; hard_concrete: Louizos et al. 2018 (stretched to
    # (-0.1, 1.1) and clipped, so masks and evaluation gates reach exactly 0 and 1; they use tau = 2/3)
    gate: str = knob("gumbel_sigmoid", choices=("gumbel_sigmoid", "hard_concrete"))
    rescale: str = knob("none", choices=("none", "inverted"))
    beta0: float = 3.0  # initial logit (p = 0.95)
    c0: float = 3.0  # regulariser target c(t) falls from c0 to c1 between t0 and t1
    c1: float = -4.0
    t0: float = knob(0.1, min=0.0, max=1.0)
    t1: float = knob(0.8, min=0.0, max=1.0)
    # unit: alpha * mean over every unit (the pull on one unit shrinks with model size); layer: mean per
    # layer, then over layers; sum: the paper's alpha * sum_d (beta_d - c(t))^2 (the same pull per unit
    # at any size, so its alpha is about 1/N of unit's for N units; README: "What alpha means")
    reg_normalization: str = knob("unit", choices=("unit", "layer", "sum"))
    weight_ffn: float = knob(1.0, min=0.0)  # per-location multipliers of the regulariser
    weight_mhsa: float = knob(1.0, min=0.0)
    weight_conv: float = knob(1.0, min=0.0)
    lr: float = knob(2e-2, min=0.0)  # learning rate of the logits (no weight decay)
    # constant: the logits warm up with the weights, then keep their rate, so they can still move when
    # c(t) bottoms out; shared: the weights' warm-up + cosine decay (before issue 12: the logits froze)
    lr_schedule: str = knob("constant", choices=("constant", "shared"))
    recalibrate_bn: bool = True  # re-estimate BatchNorm statistics with the evaluation masks before pruning
    hard_phase: float = knob(0.0, min=0.0, max=1.0)  # final fraction trained with thresholded masks
    finetune_epochs: int = knob(0, min=0)  # after pruning; 0 = the paper's "no fine-tuning"
    # A budget (study/method/budget.py): > 0 replaces the alpha term by a Lagrangian controller that drives
    # the expected parameter reduction to this fraction, ramped up over the first target_warmup of training.
    target_reduction: float = knob(0.0, min=0.0, max=0.99)
    target_warmup: float = knob(0.5, min=0.0, max=1.0)
    # what the controller drives to the target: the threshold cut's exact reduction (straight-through), or
    # the expected one (measured, main recipe, targets 30/50/70%: cut 49.9/70.1%, expected 30.1/51.5/71.6%)
    target_measure: str = knob("cut", choices=("expected", "cut"))
    lambda_lr: float = knob(5e-2, min=0.0)  # learning rate of the controller's two multipliers (gradient ascent)
    # reset lambda1 when it pushes past the target (built up while the reduction lagged the ramp); off, a 70%
    # target landed at 71.6% (main recipe, hard concrete, both seeds)
    anti_windup: bool = True
    # > 0: adds polarise * sum_units g (1 - g) (g: a unit's evaluation gate), ramped up linearly from 0 once
    # the target should be reached (target_warmup with a budget, else t1) to this weight at the end, so that units
    # left straddling the threshold (a 30% budget left 13% of them in [0.05, 0.95]) take a side
    polarise: float = knob(0.0, min=0.0)
    # with a budget, the polarisation term acts only while the cut is within this of the target
    polarise_gap: float = knob(0.005, min=0.0, max=1.0)

    def validate(self) -> None:
        if self.target_reduction and not self.locations:
            raise ValueError("adl.target_reduction needs at least one location in adl.locations")
        if self.t1 < self.t0:
            raise ValueError(f"adl.t1 ({self.t1}) must be >= adl.t0 ({self.t0})")
        if len(set(self.locations)) != len(self.locations):
            raise ValueError(f"adl.locations: repeated location in {self.locations}")
        if self.target_measure == "expected" and self.gate == "hard_concrete":
            raise ValueError('adl.target_measure = "expected" with adl.gate = "hard_concrete" counts a unit as kept '
                             'with its training mask\'s P(z > 0) = sigmoid(beta + 1.6 tau), but pruning keeps it only '
                             'when its evaluation gate is >= 1/2 (beta >= 0): the cut would land far past the target. '
                             'Use adl.target_measure = "cut" with adl.gate = "hard_concrete"')
        if self.rescale == "inverted" and self.gate == "hard_concrete":
            raise ValueError('adl.rescale = "inverted" divides by the mean of a Gumbel-sigmoid mask; a hard '
                             'concrete mask has another mean: use adl.rescale = "none" with adl.gate = "hard_concrete"')
        if self.rescale == "inverted" and self.inference == "expected":
            raise ValueError('adl.rescale = "inverted" trains on x * mask / E[mask], whose mean is x, so evaluation must '
                             'keep units unscaled: set adl.inference = "hard" (inference = "expected" would scale it twice)')


@dataclass
class PruneConfig:
    """The baselines' budget and recipe (METHOD.md section 5); ignored by dense and adaptive_dropout."""
    target_params: int = knob(0, min=0)  # parameters to keep (nonzero ones for unstructured); 0 = unset
    target_reduction: float = knob(0.0, min=0.0, max=0.99)  # 1 - kept/dense; 0 = unset
    ranking: str = knob("global", choices=("global", "uniform"))  # structured: see study/method/baselines.py
    shrink: str = knob("d_model", choices=("d_model", "inner"))  # small_dense: which widths shrink
    finetune_epochs: int = knob(0, min=0)  # magnitude baselines: training after pruning

    def validate(self) -> None:
        if self.target_params and self.target_reduction:
            raise ValueError("prune.target_params and prune.target_reduction are both set; give one")


@dataclass
class TrackingConfig:
    experiment: str = ""  # MLflow experiment; empty = the experiment file's stem
    run_name: str = ""


@dataclass
class Config:
    method: str = knob("dense", choices=METHODS)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adl: AdlConfig = field(default_factory=AdlConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        if self.method in BASELINES and not (self.prune.target_params or self.prune.target_reduction):
            raise ValueError(f"method {self.method!r} needs a budget: set prune.target_params or prune.target_reduction")
