"""`[data.synthetic]`: the built-in corpus's configuration, checked without touching eSpeak.

Whether each accent and variant has a voice file in the installed eSpeak data is checked by the
corpus builder (study/data/synthetic.py `check_voices`) before it synthesises anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

from study.config.knobs import knob

SPLITS = ("train", "dev", "test")
FIELD_PREFIX = "data.synthetic"
MIN_WORDS_LIMIT = 3  # the shortest sentence the generator can always reach
MAX_WORDS_LIMIT = 40

ENGLISH_ACCENTS = (
    "en",
    "en-us",
    "en-029",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-gb-x-rp",
    "en-us-nyc",
)

# Variants whose output differs between processes for identical input (measured with eSpeak NG
# 1.52.0: hashes change with the environment size / PYTHONHASHSEED, i.e. the memory layout). They all
# set per-formant `breath` noise; the synthetic corpus refuses them because it must be bit-exact.
NONDETERMINISTIC_VARIANTS = frozenset(
    {"Alicia", "Demonic", "f2", "f3", "f5", "sandro", "victor", "whisper", "whisperf"}
)

_DEFAULT_TRAIN_VARIANTS = [
    # standard formant voices
    "m1", "m3", "m5", "m7",
    # Klatt-synthesiser voices (klatt2/klatt3 are held out; klatt5/klatt6 also drive edward/adam...)
    "klatt", "klatt4", "klatt5", "klatt6",
    # named male voices
    "Alex", "Andy", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky",
    "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Reed", "Storm", "adam", "antonio",
    "benjamin", "david", "ed", "edward", "edward2", "grandpa", "gustave", "ian", "iven2", "iven3",
    "iven4", "john", "marcelo", "max", "michel", "miguel", "mike2", "norbert", "pablo", "paul",
    "pedro", "quincy", "rob", "robert", "travis",
    # named female voices
    "anika", "aunty", "belinda", "grandma", "linda", "shelby", "steph", "steph2", "steph3",
]
_DEFAULT_DEV_VARIANTS = ["m2", "m6", "klatt2", "f4", "Andrea"]
_DEFAULT_TEST_VARIANTS = ["m4", "m8", "klatt3", "f1", "Annie"]


@dataclass
class SyntheticConfig:
    """`[data.synthetic]`: the built-in corpus, synthesised with eSpeak NG (ranges checked by `validate`)."""

    seed: int = knob(0, "seeds the sentences, voices, rates, pitches, noise and padding", allowed=">= 0")
    train_utterances: int = knob(6000, "utterances in the training split", allowed=">= 1")
    dev_utterances: int = knob(200, "utterances in the dev split (voices of their own)", allowed=">= 1")
    test_utterances: int = knob(200, "utterances in the test split (voices of their own)", allowed=">= 1")
    min_words: int = knob(3, "fewest words in a sentence", allowed=f"{MIN_WORDS_LIMIT} to {MAX_WORDS_LIMIT}")
    max_words: int = knob(12, "most words in a sentence", allowed=f">= min_words, <= {MAX_WORDS_LIMIT}")
    rate_min: int = knob(150, "slowest speaking rate (words per minute)", allowed="80 to 450")
    rate_max: int = knob(200, "fastest speaking rate (words per minute)", allowed=">= rate_min, <= 450")
    pitch_min: int = knob(20, "lowest eSpeak pitch (0 to 100, 50 = the voice's own)", allowed="0 to 100")
    pitch_max: int = knob(80, "highest eSpeak pitch", allowed=">= pitch_min, <= 100")
    snr_db_min: float = knob(25.0, "lowest signal-to-noise ratio of the added noise (dB)")
    snr_db_max: float = knob(45.0, "highest signal-to-noise ratio (dB)", allowed=">= snr_db_min")
    pad_max_s: float = knob(0.3, "silence added before and after the speech, each drawn in [0, pad_max_s] seconds",
                            allowed="0 to 5")
    accents: list[str] = knob(lambda: list(ENGLISH_ACCENTS), "eSpeak English accents drawn from",
                              allowed=", ".join(ENGLISH_ACCENTS), factory=True)
    train_variants: list[str] = knob(lambda: list(_DEFAULT_TRAIN_VARIANTS), "eSpeak voice variants of the training "
                                     "split", allowed="installed, reproducible variants; disjoint from the other splits'",
                                     factory=True)
    dev_variants: list[str] = knob(lambda: list(_DEFAULT_DEV_VARIANTS), "voice variants of the dev split (unseen in "
                                   "training)", allowed="as train_variants", factory=True)
    test_variants: list[str] = knob(lambda: list(_DEFAULT_TEST_VARIANTS), "voice variants of the test split (unseen "
                                    "in training and dev)", allowed="as train_variants", factory=True)

    def validate(self) -> None:
        """Raise ValueError naming the field (e.g. "data.synthetic.max_words: ...")."""

        def fail(name: str, message: str) -> None:
            raise ValueError(f"{FIELD_PREFIX}.{name}: {message}")

        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                fail(f.name, f"must be an integer, got {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                fail(f.name, f"must be a finite number, got {value!r}")
            if f.type == "list[str]" and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                fail(f.name, f"must be a list of strings, got {value!r}")
        if self.seed < 0:
            fail("seed", f"must be >= 0, got {self.seed}")
        for split in SPLITS:
            if getattr(self, f"{split}_utterances") < 1:
                fail(f"{split}_utterances", f"must be >= 1, got {getattr(self, f'{split}_utterances')}")
        if not MIN_WORDS_LIMIT <= self.min_words <= MAX_WORDS_LIMIT:
            fail("min_words", f"must be in [{MIN_WORDS_LIMIT}, {MAX_WORDS_LIMIT}], got {self.min_words}")
        if self.max_words < self.min_words:
            fail("max_words", f"must be >= min_words ({self.min_words}), got {self.max_words}")
        if self.max_words > MAX_WORDS_LIMIT:
            fail("max_words", f"must be <= {MAX_WORDS_LIMIT}, got {self.max_words}")
        self._check_range("rate", 80, 450, fail)  # eSpeak's own rate limits
        self._check_range("pitch", 0, 100, fail)
        if self.snr_db_max < self.snr_db_min:
            fail("snr_db_max", f"must be >= snr_db_min ({self.snr_db_min}), got {self.snr_db_max}")
        if not 0.0 <= self.pad_max_s <= 5.0:
            fail("pad_max_s", f"must be in [0, 5] seconds, got {self.pad_max_s}")
        self._check_voice_lists(fail)

    def _check_range(self, name: str, low: int, high: int, fail: Callable[[str, str], None]) -> None:
        lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
        if not low <= lo <= high:
            fail(f"{name}_min", f"must be in [{low}, {high}], got {lo}")
        if not low <= hi <= high:
            fail(f"{name}_max", f"must be in [{low}, {high}], got {hi}")
        if hi < lo:
            fail(f"{name}_max", f"must be >= {name}_min ({lo}), got {hi}")

    def _check_voice_lists(self, fail: Callable[[str, str], None]) -> None:
        for name in ("accents",) + tuple(f"{s}_variants" for s in SPLITS):
            values = getattr(self, name)
            if not values:
                fail(name, "must not be empty")
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                fail(name, f"lists {duplicates[0]!r} more than once")
        for accent in self.accents:
            if accent not in ENGLISH_ACCENTS:
                fail("accents", f"unknown English accent {accent!r}: must be one of {', '.join(ENGLISH_ACCENTS)}")
        for split in SPLITS:
            name = f"{split}_variants"
            for variant in getattr(self, name):
                if variant in NONDETERMINISTIC_VARIANTS:
                    fail(name, f"variant {variant!r} is not reproducible (its breath noise differs "
                               f"between processes), so it cannot be part of a bit-exact corpus; "
                               f"avoid {', '.join(sorted(NONDETERMINISTIC_VARIANTS))}")
        for i, first in enumerate(SPLITS):
            for second in SPLITS[i + 1:]:
                shared = [v for v in getattr(self, f"{first}_variants") if v in getattr(self, f"{second}_variants")]
                if shared:
                    fail(f"{second}_variants", f"variant {shared[0]!r} is also in {FIELD_PREFIX}.{first}_variants; "
                                               f"the splits must use disjoint voices")
