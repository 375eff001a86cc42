"""The names both sides share: the trial methods and the adaptive-dropout locations (no torch here, so
`analysis/` can import it on a machine without torch)."""

METHODS = ("dense", "adaptive_dropout", "magnitude_structured", "magnitude_unstructured", "small_dense", "retrain_pruned",
           "activation_structured", "taylor_structured")
# Whole units removed from the trained dense run, ranked by weight norm, weight x activation, or first-order Taylor
STRUCTURED = ("magnitude_structured", "activation_structured", "taylor_structured")
PRUNES_DENSE = (*STRUCTURED, "magnitude_unstructured")  # start from a trained dense run
BASELINES = (*PRUNES_DENSE, "small_dense")  # need a budget: prune.target_params or prune.target_reduction
LOCATIONS = ("ffn", "mhsa", "conv")  # where adaptive dropout layers sit (docs/methods.md)
ADAPTIVE_DROPOUT = "adaptive_dropout"
RETRAIN_PRUNED = "retrain_pruned"  # a pruned run's architecture trained from scratch (prune.source_run)
# The order of methods in figures and tables: the reference, the baselines, then the method studied.
REPORT_ORDER = ("dense", "small_dense", RETRAIN_PRUNED, "magnitude_structured", "magnitude_unstructured",
                "activation_structured", "taylor_structured", ADAPTIVE_DROPOUT)
assert sorted(REPORT_ORDER) == sorted(METHODS)
# MLflow tags a trial or a sweep writes (study/) and the analysis reads (analysis/): one spelling for both.
TAG_ROLE = "sweep.role"  # "trial" or "parent"
TAG_METHOD = "method"
TAG_SEED = "seed"
TAG_LOCATIONS = "locations"
TAG_GRID_POINT = "grid_point"  # a grid point's key, or a search trial's sampled values (JSON)
TAG_SOURCE_DENSE_RUN = "source_dense_run_id"  # the dense run a magnitude trial pruned
TAG_BUDGET = "budget.target_params"
TAG_FAILURE_REASON = "failure_reason"
TAG_TRIAL_KEY = "trial_key"  # the trial's checkpoint folder (study/tracking/trial_record.py): every attempt's run has it
# Per test utterance of every trial: word edits and reference words, for the analysis's bootstrap.
UTTERANCE_ERRORS = "test_utterance_errors.json"


def unread_sections(method: str) -> tuple[str, ...]:
    """Configuration sections a method does not read: they neither split its runs into settings nor
    change its trial's identity (a magnitude trial's dense source is the sweep's dense trial)."""
    if method == "dense":
        return ("adl", "prune")
    if method == ADAPTIVE_DROPOUT:
        return ("prune",)
    return ("adl",)
