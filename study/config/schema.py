"""The typed configuration of one trial: dataclasses with defaults, the ranges each key accepts and
what each key does.

Every key is a `knob` (study/config/knobs.py): ranges in its metadata are enforced by the TOML reader
(study/config/toml_io.py), and its one-line meaning is what docs/configuration.md shows
(`python -m study.config.reference > docs/configuration.md` writes that page; a test keeps it current).
"""
from __future__ import annotations

from dataclasses import dataclass

from study.config.knobs import knob, section
from study.config.synthetic import SyntheticConfig
from study.names import BASELINES, LOCATIONS, PRUNES_DENSE, METHODS, RETRAIN_PRUNED


@dataclass
class FsddConfig:
    """`[data.fsdd]`: how the Free Spoken Digit Dataset is split (data.source = "fsdd")."""
    split_by: str = knob("index", "index: by recording index (every speaker in every split); speaker: by speaker",
                         choices=("index", "speaker"))
    dev_indices: list[int] = knob(lambda: list(range(5, 10)), "recording indices of the dev split (split_by = \"index\")",
                                  factory=True)
    test_indices: list[int] = knob(lambda: list(range(0, 5)), "recording indices of the test split (split_by = \"index\")",
                                   factory=True)
    dev_speakers: list[str] = knob(lambda: ["nicolas"], "speakers of the dev split (split_by = \"speaker\")", factory=True)
    test_speakers: list[str] = knob(lambda: ["theo"], "speakers of the test split (split_by = \"speaker\")", factory=True)


@dataclass
class ManifestConfig:
    """`[data.manifest]`: your own corpus, one manifest per split (data.source = "manifest"; docs/your-data.md)."""
    train: str = knob("", "training split: a NeMo JSON-lines manifest, a Kaldi data directory or a TSV manifest")
    dev: str = knob("", "dev split, in the same format")
    test: str = knob("", "test split, in the same format")
    format: str = knob("auto", "auto: a folder is a Kaldi data directory, *.json / *.jsonl NeMo, *.tsv this harness's",
                       choices=("auto", "nemo", "kaldi", "tsv"))
    speaker_disjoint: bool = knob(False, "refuse splits that share a speaker (off: shared speakers are only reported)")


@dataclass
class DataConfig:
    """`[data]`: where the speech comes from."""
    source: str = knob("synthetic", "the corpus: the built-in synthetic one, LibriSpeech, FSDD, or your own manifests "
                                    "(docs/data.md, docs/your-data.md)",
                       choices=("synthetic", "librispeech", "fsdd", "manifest"))
    root: str = knob("", "data set folder for librispeech and fsdd")
    cache_dir: str = knob("runs/cache", "corpus and feature caches; relative to the working directory")
    train_subsets: list[str] = knob(lambda: ["train-clean-100"], "librispeech: training subsets", factory=True)
    dev_subsets: list[str] = knob(lambda: ["dev-clean"], "librispeech: dev subsets", factory=True)
    test_subsets: list[str] = knob(lambda: ["test-clean"], "librispeech: test subsets", factory=True)
    extra_test_subsets: list[str] = knob(list, "librispeech: more test sets, each reported as <subset>/wer and /cer",
                                         factory=True)
    max_train_seconds: float = knob(30.0, "longer training utterances are skipped", min=0.5)
    synthetic: SyntheticConfig = section(SyntheticConfig, "the built-in synthetic corpus")
    fsdd: FsddConfig = section(FsddConfig, "the FSDD splits")
    manifest: ManifestConfig = section(ManifestConfig, "your own corpus's manifests")


@dataclass
class FeatureConfig:
    """`[features]`: log-mel features and training-time augmentation."""
    n_mels: int = knob(80, "mel bins", min=8)
    win_ms: float = knob(25.0, "analysis window (ms)", min=5)
    hop_ms: float = knob(10.0, "frame hop (ms)", min=1)
    freq_masks: int = knob(1, "SpecAugment frequency masks per utterance (training only)", min=0)
    freq_mask_width: int = knob(10, "widest frequency mask (mel bins)", min=0)
    time_masks: int = knob(1, "SpecAugment time masks per utterance (training only)", min=0)
    time_mask_width: int = knob(10, "widest time mask (frames)", min=0)
    freq_warp: float = knob(0.0, "vocal tract length perturbation: each training utterance's mel axis stretched by a "
                                 "factor in [1 - freq_warp, 1 + freq_warp] (0 = off; 0.1 is the usual range)",
                            min=0.0, max=0.5)
    speed_perturb: list[float] = knob(list, "speed perturbation (Ko et al. 2015): one resampled copy of every training "
                                            "utterance per factor, tempo and pitch both moved ([0.9, 1.1] as Kaldi; [] = off)",
                                      min=0.5, max=2.0, factory=True)


@dataclass
class TextConfig:
    """`[text]`: the CTC output units: characters, or BPE subwords trained on the training transcripts."""
    units: str = knob("bpe", "output units: characters, or sentencepiece BPE pieces", choices=("char", "bpe"))
    bpe_vocab_size: int = knob(128, "sentencepiece pieces (the blank comes on top)", min=8)


@dataclass
class ModelConfig:
    """`[model]`: the Conformer-CTC's shape."""
    d_model: int = knob(96, "model width; divisible by num_heads", min=8)
    num_heads: int = knob(4, "attention heads", min=1)
    ffn_dim: int = knob(384, "hidden units of each feed-forward module", min=1)
    conv_channels: int = knob(96, "channels after the GLU in the conv module", min=1)
    conv_kernel: int = knob(15, "depthwise convolution kernel; odd", min=1)
    num_blocks: int = knob(4, "Conformer blocks", min=1)
    subsampling: int = knob(8, "front-end frame-rate reduction (8: FastConformer-style)", choices=(4, 8))
    subsampling_channels: int = knob(256, "front-end channels (docs/recipes.md: the main recipe)", min=1)
    front_end: str = knob("conv1d", "conv1d: mel bins as channels, 8x only, about a sixth of conv2d's multiply-adds",
                          choices=("conv2d", "conv1d"))
    dropout: float = knob(0.1, "dropout after each module and inside the feed-forward module", min=0.0, max=0.9)
    attention_dropout: float = knob(0.0, "dropout on attention weights; slow on the CPU", min=0.0, max=0.9)
    scale_input: bool = knob(True, "multiply the front end's output by sqrt(d_model) before adding positions")
    input_norm: str = knob("none", "per-utterance feature normalisation inside the model (travels with an export): "
                                   "utterance_mean subtracts each bin's mean (CMN), utterance also divides by its std",
                           choices=("none", "utterance_mean", "utterance"))

    def validate(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.num_heads ({self.num_heads})")
        if self.front_end == "conv1d" and self.subsampling != 8:
            raise ValueError(f"model.front_end = \"conv1d\" needs model.subsampling = 8, got {self.subsampling}")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"model.conv_kernel must be odd (same-length output), got {self.conv_kernel}")


@dataclass
class TrainConfig:
    """`[train]`: the optimiser, schedule and where training runs."""
    epochs: int = knob(18, "training epochs (adaptive dropout: the epochs with ADLs, before any fine-tuning)", min=1)
    batch_seconds: float = knob(48.0, "audio seconds per length-bucketed batch (docs/recipes.md: the main recipe)",
                                min=1.0)
    lr: float = knob(4e-3, "AdamW peak learning rate of the weights", min=0.0)
    weight_decay: float = knob(1e-2, "AdamW weight decay of the weights", min=0.0)
    warmup_fraction: float = knob(0.3, "linear warm-up as a fraction of all steps, then cosine decay", min=0.0, max=1.0)
    grad_clip: float = knob(5.0, "gradient norm clip (0 = off)", min=0.0)
    seed: int = knob(0, "seeds initialisation, batch order, dropout, SpecAugment and mask noise")
    device: str = knob("auto", "where a trial trains: auto (a GPU if there is one), cpu, cuda or cuda:N",
                       allowed="auto, cpu, cuda, cuda:N")
    threads: int = knob(0, "CPU threads; 0 = every core this process may use", min=0)
    compile: bool = knob(False, "torch.compile each Conformer block (pays off on a GPU)")
    processes: int = knob(1, "> 1: DistributedDataParallel over this many processes (docs/gpu.md)", min=1)


@dataclass
class AdlConfig:
    """`[adl]`: adaptive dropout (docs/methods.md); used when method = "adaptive_dropout"."""
    locations: list[str] = knob(lambda: ["ffn", "mhsa", "conv"], "where ADLs sit: FFN hidden units, attention "
                                "queries and values, conv-module channels", choices=LOCATIONS, factory=True)
    alpha: float = knob(1e-2, "penalty weight of the regulariser alpha (beta - c(t))^2", min=0.0)
    tau: float = knob(1.0, "Gumbel-sigmoid temperature", min=1e-3)
    tau_end: float = knob(0.0, "> 0: anneal tau geometrically to this by the end of training", min=0.0)
    threshold: float = knob(0.5, "units whose retention p (or hard concrete gate) is below this are pruned",
                            min=0.0, max=1.0)
    inference: str = knob("expected", "evaluation scales a kept unit by its training mask's mean E[m] (expected) "
                                      "or not at all (hard)", choices=("expected", "hard"))
    mask_granularity: str = knob("frame", "a fresh mask per unit and frame, or one per unit and utterance",
                                 choices=("frame", "utterance"))
    noise: str = knob("pooled", "pooled: logistic noise drawn in bulk and reused at random offsets (an eighth of "
                                "the generator's work); fresh: drawn anew for every element", choices=("pooled", "fresh"))
    straight_through: bool = knob(False, "forward uses the mask's decision m > 1/2, the gradient the relaxed mask")
    gate: str = knob("gumbel_sigmoid", "the paper's relaxed Bernoulli, or hard concrete gates (Louizos et al. 2018: "
                                       "stretched and clipped, so masks reach exactly 0 and 1; use tau = 2/3)",
                     choices=("gumbel_sigmoid", "hard_concrete"))
    rescale: str = knob("none", "inverted: training divides the mask by its mean E[m] (needs inference = \"hard\")",
                        choices=("none", "inverted"))
    beta0: float = knob(3.0, "initial logit (p = 0.95)")
    c0: float = knob(3.0, "the regulariser's target c(t) falls from c0 to c1 between t0 and t1")
    c1: float = knob(-4.0, "the regulariser's final target logit")
    t0: float = knob(0.1, "training fraction where c(t) starts to fall", min=0.0, max=1.0)
    t1: float = knob(0.8, "training fraction where c(t) reaches c1", min=0.0, max=1.0)
    reg_normalization: str = knob("unit", "sum: the paper's sum over units (the same pull per unit at any size); "
                                          "unit: mean over every unit; layer: mean per layer, then over layers",
                                  choices=("unit", "layer", "sum"))
    weight_ffn: float = knob(1.0, "regulariser multiplier of the ffn location", min=0.0)
    weight_mhsa: float = knob(1.0, "regulariser multiplier of the mhsa location", min=0.0)
    weight_conv: float = knob(1.0, "regulariser multiplier of the conv location", min=0.0)
    lr: float = knob(2e-2, "learning rate of the logits (no weight decay)", min=0.0)
    lr_schedule: str = knob("constant", "constant: the logits warm up, then keep their rate (they can still move when "
                                        "c(t) bottoms out); shared: the weights' warm-up and cosine decay",
                            choices=("constant", "shared"))
    recalibrate_bn: bool = knob(True, "re-estimate BatchNorm statistics with the evaluation masks before pruning, "
                                      "on a seeded random sample of 2,000 training utterances")
    hard_phase: float = knob(0.0, "final fraction of training with thresholded masks and frozen logits", min=0.0, max=1.0)
    finetune_epochs: int = knob(0, "training after pruning; 0 = the paper's \"no fine-tuning\"", min=0)
    target_reduction: float = knob(0.0, "> 0: the budget controller (a Lagrangian) replaces the alpha term and drives "
                                        "the parameter reduction to this fraction", min=0.0, max=0.99)
    target_warmup: float = knob(0.5, "the controller's target ramps up from 0 over this fraction of training",
                                min=0.0, max=1.0)
    target_measure: str = knob("cut", "what the controller drives: the threshold cut's exact reduction, or the "
                                      "expected one under p (Gumbel-sigmoid gates only)", choices=("expected", "cut"))
    lambda_lr: float = knob(5e-2, "learning rate of the controller's two multipliers (gradient ascent)", min=0.0)
    anti_windup: bool = knob(True, "reset lambda1 when it pushes past the target (off: a 70% target landed at 71.6%)")
    polarise: float = knob(0.0, "> 0: adds polarise * sum g (1 - g) over units' gates, ramped up once the size is "
                                "reached, so no unit is left straddling the threshold", min=0.0)
    polarise_gap: float = knob(0.005, "with a budget, polarisation acts only while the cut is within this of the "
                                      "target", min=0.0, max=1.0)
    init: str = knob("scratch", "scratch: train and prune jointly from random weights (the paper); dense: start from "
                                "a trained dense model and prune it over adl.pruning_epochs", choices=("scratch", "dense"))
    init_from: str = knob("", "with init = \"dense\": a model.pt this harness exported (a path or runs:/<run_id>/model.pt); "
                              "empty: the finished dense run of this recipe (train.epochs), trained first if there is none")
    pruning_epochs: int = knob(2, "with init = \"dense\": epochs of training with ADLs from the dense model (train.epochs "
                                  "stays the dense recipe's, so the sweep's dense run is the start)", min=1)
    distill: float = knob(0.0, "with init = \"dense\": weight of KL(dense || pruned) between the CTC posteriors, frame "
                               "by frame, added to the loss (0: no teacher)", min=0.0)
    distill_hidden: float = knob(0.0, "with init = \"dense\": weight of the mean squared error between the pruned and "
                                      "the dense model's block outputs, per frame (layer-wise distillation; 0: none)", min=0.0)
    distill_blocks: list[int] = knob(list, "blocks (from 0) whose outputs distill_hidden matches; [] = every block",
                                     min=0, factory=True)

    def validate(self) -> None:
        if (self.distill or self.distill_hidden) and self.init != "dense":
            raise ValueError('adl.distill and adl.distill_hidden need a dense teacher: set adl.init = "dense"')
        if self.init_from and self.init != "dense":
            raise ValueError('adl.init_from is set but adl.init is "scratch": set adl.init = "dense" to start from it')
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
    """`[prune]`: the baselines' budget and recipe (docs/methods.md, Baselines); ignored by dense and adaptive_dropout."""
    target_params: int = knob(0, "parameters to keep (nonzero ones for unstructured); 0 = unset", min=0)
    target_reduction: float = knob(0.0, "1 - kept / dense parameters; 0 = unset", min=0.0, max=0.99)
    ranking: str = knob("global", "structured: rank units across all layers, or prune every layer by the same share",
                        choices=("global", "uniform"))
    shrink: str = knob("d_model", "small_dense: shrink the model width, or only the inner widths",
                       choices=("d_model", "inner"))
    finetune_epochs: int = knob(0, "magnitude baselines: training epochs after pruning", min=0)
    distill: float = knob(0.0, "magnitude baselines' fine-tuning: weight of KL(dense || pruned) between the CTC "
                               "posteriors, frame by frame, added to the loss (0: no teacher)", min=0.0)
    distill_hidden: float = knob(0.0, "magnitude baselines' fine-tuning: weight of the mean squared error between the "
                                      "pruned and the dense model's block outputs, per frame (0: none)", min=0.0)
    distill_blocks: list[int] = knob(list, "blocks (from 0) whose outputs distill_hidden matches; [] = every block",
                                     min=0, factory=True)
    calibration_utterances: int = knob(256, "activation_structured and taylor_structured: training utterances whose "
                                            "activations (or CTC gradients) rank the units", min=1)
    source_run: str = knob("", "retrain_pruned: the pruned model whose architecture is trained from scratch for "
                               "train.epochs, a run id (its model.pt), runs:/<run_id>/model.pt or a model.pt path")
    dense_from: str = knob("", "magnitude baselines: the trained dense model to prune, a model.pt this harness exported "
                               "(a path, runs:/<run_id>/model.pt or a run id); empty: the finished dense run of this "
                               "recipe, trained first if there is none")

    def validate(self) -> None:
        if self.target_params and self.target_reduction:
            raise ValueError("prune.target_params and prune.target_reduction are both set; give one")


@dataclass
class TrackingConfig:
    """`[tracking]`: where a trial's MLflow run goes."""
    experiment: str = knob("", "MLflow experiment; empty = the experiment file's stem")
    run_name: str = knob("", "MLflow run name; empty = one made from the settings")


@dataclass
class Config:
    """The top level of an experiment file."""
    method: str = knob("dense", "what a trial trains: dense, adaptive dropout, or a baseline (docs/methods.md)",
                       choices=METHODS)
    data: DataConfig = section(DataConfig, "the corpus")
    features: FeatureConfig = section(FeatureConfig, "features and augmentation")
    text: TextConfig = section(TextConfig, "output units")
    model: ModelConfig = section(ModelConfig, "the Conformer-CTC")
    train: TrainConfig = section(TrainConfig, "training")
    adl: AdlConfig = section(AdlConfig, "adaptive dropout")
    prune: PruneConfig = section(PruneConfig, "the baselines")
    tracking: TrackingConfig = section(TrackingConfig, "MLflow")

    def validate(self) -> None:
        if self.train.processes > 1 and (self.adl.distill or self.prune.distill or self.adl.distill_hidden
                                         or self.prune.distill_hidden):
            raise ValueError("adl.distill* / prune.distill* run the teacher in one process: set train.processes = 1")
        for table in ("adl", "prune"):
            beyond = [b for b in getattr(self, table).distill_blocks if b >= self.model.num_blocks]
            if beyond:
                raise ValueError(f"{table}.distill_blocks: block {beyond[0]} does not exist (model.num_blocks is "
                                 f"{self.model.num_blocks}; blocks count from 0)")
        if (self.method == RETRAIN_PRUNED) != bool(self.prune.source_run):
            raise ValueError(f"method 'retrain_pruned' reads its architecture from prune.source_run; set both or neither "
                             f"(method is {self.method!r}, prune.source_run is {self.prune.source_run!r})")
        if self.method in BASELINES and not (self.prune.target_params or self.prune.target_reduction):
            raise ValueError(f"method {self.method!r} needs a budget: set prune.target_params or prune.target_reduction")
        if self.prune.dense_from and self.method not in PRUNES_DENSE:
            raise ValueError(f"prune.dense_from names the dense model a pruning baseline ({', '.join(PRUNES_DENSE)}) "
                             f"prunes, but method is {self.method!r} (adaptive dropout takes adl.init_from)")
