"""The built-in synthetic English speech corpus: seeded command-style sentences spoken by eSpeak NG.

Layout under `cache_root / f"synthetic-{hash}"` (hash = config + format version + eSpeak version):
    audio/<split>/<id>.flac    16 kHz mono 16-bit FLAC
    train.tsv dev.tsv test.tsv manifests (study.data.manifest)
    config.json                the config that made it
    COMPLETE                   written last; a folder without it is never used
The folder is built under a temporary sibling name and renamed into place when complete, so a crash
leaves no folder that could be mistaken for a finished one.

Determinism: every random draw for a split is made up front, in a fixed order, from a generator
seeded by (seed, split); the workers only execute those draws, and eSpeak speaks each utterance from
a freshly initialised state (see study.data.espeak), so the corpus is bit-identical whatever the
number of worker processes.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile
import torch

from study.data import espeak
from study.data.audio import SAMPLE_RATE, resample
from study.data.manifest import DataError, Utterance, read_manifest, write_manifest

CORPUS_FORMAT_VERSION = 1  # bump when the rendering below changes, so old caches are not reused
SPLITS = ("train", "dev", "test")
COMPLETE_MARKER = "COMPLETE"
FIELD_PREFIX = "data.synthetic"
PEAK_LEVEL = 0.9  # peak after normalisation, headroom against clipping in the int16 conversion
TRIM_THRESHOLD_DB = -40.0  # relative to the peak: quieter edges count as silence
TRIM_MARGIN_S = 0.05  # silence kept at each edge when trimming
MIN_WORDS_LIMIT = 3  # the shortest sentence the generator can always reach
MAX_WORDS_LIMIT = 40
PROGRESS_EVERY = 500

# ---------------------------------------------------------------------------------------------
# Sentence generator: a closed vocabulary, command/question templates with slots, free variation.
# Entries may hold several words ("living room"); every word ends up in VOCABULARY.

_ONES = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen")
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
             "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
             "seventeenth", "eighteenth", "nineteenth", "twentieth", "twenty first", "twenty second",
             "twenty third", "twenty fourth", "twenty fifth", "twenty sixth", "twenty seventh",
             "twenty eighth", "twenty ninth", "thirtieth", "thirty first")
_HOURS = _ONES + ("ten", "eleven", "twelve")
_MINUTES = ("oh five", "ten", "fifteen", "twenty", "twenty five", "thirty", "thirty five", "forty",
            "forty five", "fifty", "fifty five")
_DAY_PARTS = ("in the morning", "in the afternoon", "in the evening", "at night")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december")
_CITIES = ("london", "paris", "berlin", "tokyo", "madrid", "rome", "chicago", "boston", "seattle",
           "denver", "dallas", "sydney", "toronto", "dublin", "vienna", "prague", "oslo", "lisbon",
           "cairo", "mumbai", "delhi", "nairobi", "lima", "new york", "san francisco", "los angeles",
           "hong kong", "mexico city", "amsterdam", "brussels", "warsaw", "athens", "istanbul",
           "moscow", "beijing", "seoul", "bangkok", "singapore", "melbourne", "vancouver",
           "montreal", "miami", "atlanta", "houston", "phoenix", "edinburgh", "glasgow", "manchester")
_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "brown",
            "grey", "gold", "silver", "violet", "turquoise")
_ROOMS = ("kitchen", "bedroom", "bathroom", "living room", "dining room", "hallway", "office",
          "garage", "basement", "attic", "nursery", "porch", "study", "laundry room", "guest room")
_OBJECTS = ("box", "chair", "table", "lamp", "cup", "mug", "book", "ball", "bottle", "vase", "plate",
            "bowl", "basket", "pillow", "blanket", "candle", "clock", "shoe", "hat", "bag", "toy",
            "block", "cushion", "jar", "bucket", "brush")
_SIZES = ("big", "small", "large", "tiny", "little", "heavy", "old", "new", "round", "square",
          "wooden", "metal", "plastic", "soft")
_PLACES_REL = ("to the left of", "to the right of", "next to", "behind", "in front of", "under",
               "on top of", "beside", "near", "inside", "away from")
_NAMES = ("anna", "ben", "carlos", "diana", "emma", "frank", "grace", "henry", "isabel", "jack",
          "kate", "liam", "maria", "noah", "olivia", "peter", "rachel", "sam", "tom", "uma",
          "william", "zoe", "lucas", "sofia", "mia", "oscar", "leo", "nina", "david", "laura")
_DEVICES = ("lights", "lamp", "fan", "heater", "television", "radio", "oven", "kettle",
            "dishwasher", "washing machine", "air conditioning", "speaker", "computer", "printer",
            "coffee machine", "vacuum cleaner")
_OPENABLES = ("door", "window", "curtains", "blinds", "garage door", "front door", "back door",
              "gate")
_ITEMS = ("milk", "bread", "eggs", "butter", "cheese", "apples", "bananas", "oranges", "grapes",
          "lemons", "rice", "pasta", "flour", "sugar", "salt", "pepper", "coffee", "tea", "juice",
          "yogurt", "chicken", "fish", "beans", "carrots", "potatoes", "onions", "tomatoes",
          "lettuce", "cereal", "honey", "jam", "soap", "shampoo", "toothpaste")
_GENRES = ("jazz", "rock", "classical", "pop", "folk", "blues", "country", "reggae", "hip hop",
           "soul", "piano", "dance")
_MEDIA = ("the news", "a podcast", "some music", "the radio", "my playlist", "the next song",
          "the previous song", "an audiobook", "something relaxing")
_BELONGINGS = ("phone", "keys", "wallet", "glasses", "umbrella", "headphones", "charger",
               "passport", "jacket", "watch")
_MESSAGES = ("i will be late", "i am on my way", "i am running late", "call me back",
             "dinner is ready", "see you soon", "the meeting is cancelled", "happy birthday",
             "thank you")
_CHORES = ("water the plants", "feed the cat", "walk the dog", "take out the trash",
           "pay the rent", "book a table", "send the report", "check the mail",
           "take my medicine", "charge my phone", "buy milk")
_POLITE_PREFIX = ("please", "could you", "can you", "hey", "okay", "now")
_POLITE_SUFFIX = ("please", "now", "right now", "for me", "thanks", "right away")
_QUESTION_PREFIX = ("hey", "okay", "tell me")

_Rng = np.random.Generator


def _pick(rng: _Rng, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _maybe(rng: _Rng, p: float) -> bool:
    return bool(rng.random() < p)


def _number(rng: _Rng, low: int = 1, high: int = 99) -> str:
    """A cardinal low..high (<= 100) spelled out in words."""
    n = int(rng.integers(low, high + 1))
    if n == 100:
        return "a hundred"
    if n < 10:
        return _ONES[n - 1]
    if n < 20:
        return _TEENS[n - 10]
    tens, ones = divmod(n, 10)
    return _TENS[tens - 2] + ("" if ones == 0 else " " + _ONES[ones - 1])


def _time(rng: _Rng) -> str:
    hour = _pick(rng, _HOURS)
    kind = int(rng.integers(7))
    if kind == 0:
        text = f"{hour} o'clock"
    elif kind == 1:
        text = hour
    elif kind in (2, 3):
        text = f"{hour} {_pick(rng, _MINUTES)}"
    elif kind == 4:
        text = f"{_pick(rng, ('half past', 'quarter past', 'quarter to', 'ten past', 'twenty to'))} {hour}"
    else:
        return _pick(rng, ("noon", "midnight", "seven thirty", "six in the morning", "nine at night")) \
            if kind == 5 else f"{hour} {_pick(rng, _DAY_PARTS)}"
    if _maybe(rng, 0.25):
        text += " " + _pick(rng, _DAY_PARTS)
    return text


def _when(rng: _Rng) -> str:
    kind = int(rng.integers(6))
    if kind == 0:
        return f"on {_pick(rng, _DAYS)}"
    if kind == 1:
        return _pick(rng, ("tomorrow", "today", "tonight", "this weekend", "next week"))
    if kind == 2:
        return f"next {_pick(rng, _DAYS)}"
    if kind == 3:
        return f"every {_pick(rng, _DAYS)}"
    if kind == 4:
        return f"on {_pick(rng, _MONTHS)} {_pick(rng, _ORDINALS)}"
    return f"on the {_pick(rng, _ORDINALS)} of {_pick(rng, _MONTHS)}"


def _thing(rng: _Rng) -> str:
    """A described object: "the [size] [colour] box"."""
    words = ["the"]
    if _maybe(rng, 0.3):
        words.append(_pick(rng, _SIZES))
    if _maybe(rng, 0.75):
        words.append(_pick(rng, _COLOURS))
    words.append(_pick(rng, _OBJECTS))
    return " ".join(words)


def _t_alarm(rng: _Rng) -> tuple[str, bool]:
    head = _pick(rng, ("set an alarm for", "wake me up at", "set my alarm for", "set an alarm at"))
    tail = f" {_when(rng)}" if _maybe(rng, 0.6) else ""
    return f"{head} {_time(rng)}{tail}", True


def _t_timer(rng: _Rng) -> tuple[str, bool]:
    unit = _pick(rng, ("minutes", "seconds", "hours"))
    if _maybe(rng, 0.7):
        return f"set a timer for {_number(rng, 2, 59)} {unit}", True
    return f"start a {_number(rng, 1, 59)} minute timer", True


def _t_light_colour(rng: _Rng) -> tuple[str, bool]:
    room, colour = _pick(rng, _ROOMS), _pick(rng, _COLOURS)
    form = int(rng.integers(3))
    if form == 0:
        return f"turn the {room} lights {colour}", True
    if form == 1:
        return f"make the {room} lights {colour}", True
    return f"change the lights in the {room} to {colour}", True


def _t_switch(rng: _Rng) -> tuple[str, bool]:
    device, state = _pick(rng, _DEVICES), _pick(rng, ("on", "off"))
    where = f" in the {_pick(rng, _ROOMS)}" if _maybe(rng, 0.5) else ""
    form = int(rng.integers(4))
    if form == 0:
        return f"turn {state} the {device}{where}", True
    if form == 1:
        return f"switch the {device} {state}{where}", True
    if form == 2:
        return f"dim the {_pick(rng, _ROOMS)} lights to {_number(rng, 5, 95)} percent", True
    return f"{'are' if device == 'lights' else 'is'} the {device}{where} still on", False


def _t_move(rng: _Rng) -> tuple[str, bool]:
    verb = _pick(rng, ("move", "put", "place", "push", "slide"))
    form = int(rng.integers(4))
    if form <= 1:
        return f"{verb} {_thing(rng)} {_pick(rng, _PLACES_REL)} {_thing(rng)}", True
    if form == 2:
        return f"pick up {_thing(rng)} and give it to {_pick(rng, _NAMES)}", True
    return f"{verb} {_thing(rng)} into the {_pick(rng, _ROOMS)}", True


def _t_call(rng: _Rng) -> tuple[str, bool]:
    name = _pick(rng, _NAMES)
    form = int(rng.integers(4))
    if form == 0:
        extra = f" at {_time(rng)}" if _maybe(rng, 0.4) else (f" {_when(rng)}" if _maybe(rng, 0.3) else "")
        return f"call {name}{extra}", True
    if form == 1:
        return f"send a message to {name} saying {_pick(rng, _MESSAGES)}", True
    if form == 2:
        return f"text {name} that {_pick(rng, _MESSAGES)}", True
    return f"video call {name} and {_pick(rng, _NAMES)}", True


def _t_weather(rng: _Rng) -> tuple[str, bool]:
    city = _pick(rng, _CITIES)
    form = int(rng.integers(4))
    if form == 0:
        when = f" {_when(rng)}" if _maybe(rng, 0.5) else ""
        head = _pick(rng, ("what is the weather like", "what's the weather", "how is the weather",
                           "what is the forecast"))
        return f"{head} in {city}{when}", False
    if form == 1:
        return f"will it {_pick(rng, ('rain', 'snow', 'be sunny', 'be windy'))} in {city} {_when(rng)}", False
    if form == 2:
        return f"how {_pick(rng, ('cold', 'hot', 'warm'))} is it in {city} {_pick(rng, ('today', 'right now', 'tonight'))}", False
    return f"what time is it in {city}", False


def _t_music(rng: _Rng) -> tuple[str, bool]:
    form = int(rng.integers(4))
    if form == 0:
        music = " music" if _maybe(rng, 0.5) else ""
        where = f" in the {_pick(rng, _ROOMS)}" if _maybe(rng, 0.5) else ""
        return f"play {_pick(rng, ('some ', ''))}{_pick(rng, _GENRES)}{music}{where}", True
    if form == 1:
        return f"play {_pick(rng, _MEDIA)}", True
    if form == 2:
        return f"turn the volume {_pick(rng, ('up', 'down'))}", True
    return f"set the volume to {_number(rng, 1, 10)}", True


def _t_reminder(rng: _Rng) -> tuple[str, bool]:
    chore = _pick(rng, _CHORES) if _maybe(rng, 0.7) else _pick(
        rng, (f"call {_pick(rng, _NAMES)}", f"pick up {_pick(rng, _NAMES)}", f"clean the {_pick(rng, _ROOMS)}"))
    at = f" at {_time(rng)}" if _maybe(rng, 0.6) else ""
    when = f" {_when(rng)}" if _maybe(rng, 0.5) else ""
    return f"remind me to {chore}{at}{when}", True


def _t_shopping(rng: _Rng) -> tuple[str, bool]:
    if _maybe(rng, 0.25):
        return f"do we have any {_pick(rng, _ITEMS)} left", False
    items = [_pick(rng, _ITEMS) for _ in range(int(rng.integers(1, 4)))]
    listed = items[0] if len(items) == 1 else " ".join(items[:-1]) + " and " + items[-1]
    return f"add {listed} to {_pick(rng, ('my', 'the'))} shopping list", True


def _t_travel(rng: _Rng) -> tuple[str, bool]:
    a, b = _pick(rng, _CITIES), _pick(rng, _CITIES)
    form = int(rng.integers(3))
    if form == 0:
        return f"book a {_pick(rng, ('flight', 'train', 'bus'))} from {a} to {b} {_when(rng)}", True
    if form == 1:
        return f"how long does it take to get from {a} to {b}", False
    return f"find a hotel in {a} for {_number(rng, 1, 9)} nights", True


def _t_temperature(rng: _Rng) -> tuple[str, bool]:
    room = _pick(rng, _ROOMS)
    if _maybe(rng, 0.6):
        return f"set the temperature in the {room} to {_number(rng, 15, 30)} degrees", True
    return f"make it {_pick(rng, ('warmer', 'cooler'))} in the {room}", True


def _t_doors(rng: _Rng) -> tuple[str, bool]:
    form = int(rng.integers(3))
    if form == 0:
        return f"{_pick(rng, ('open', 'close'))} the {_pick(rng, _ROOMS)} {_pick(rng, _OPENABLES)}", True
    if form == 1:
        return f"{_pick(rng, ('lock', 'unlock'))} the {_pick(rng, ('front', 'back', 'garage', 'side'))} door", True
    return f"is the {_pick(rng, _ROOMS)} {_pick(rng, _OPENABLES)} open", False


def _t_calendar(rng: _Rng) -> tuple[str, bool]:
    name = _pick(rng, _NAMES)
    form = int(rng.integers(4))
    if form == 0:
        return f"schedule a meeting with {name} on {_pick(rng, _DAYS)} at {_time(rng)}", True
    if form == 1:
        return f"cancel my meeting with {name}", True
    if form == 2:
        return f"what is on my calendar {_when(rng)}", False
    return f"move my meeting with {name} to {_pick(rng, _DAYS)}", True


def _t_find(rng: _Rng) -> tuple[str, bool]:
    thing = _pick(rng, _BELONGINGS)
    if _maybe(rng, 0.5):
        return f"where did i leave my {thing}", False
    return f"find my {thing}", True


def _t_arithmetic(rng: _Rng) -> tuple[str, bool]:
    op = _pick(rng, ("plus", "minus", "times", "divided by"))
    return f"what is {_number(rng, 1, 100)} {op} {_number(rng, 1, 20)}", False


_TEMPLATES: tuple[Callable[[_Rng], tuple[str, bool]], ...] = (
    _t_alarm, _t_timer, _t_light_colour, _t_switch, _t_move, _t_move, _t_call, _t_weather,
    _t_music, _t_reminder, _t_shopping, _t_travel, _t_temperature, _t_doors, _t_calendar, _t_find,
    _t_arithmetic,
)

# Words the templates spell out literally (everything else comes from the slot lists above).
_TEMPLATE_WORDS = """
set an alarm for wake me up at my o'clock half past quarter to ten twenty on tomorrow today tonight
this weekend next week every the of a timer minutes seconds hours start minute turn lights make
change in switch dim percent is still move put place push slide pick give it into call send message
saying text that video and what will be weather like rain snow sunny windy how cold hot warm right
now time play some music volume down remind clean add shopping list do we have any left book flight
train bus from get does take long find hotel nights temperature degrees warmer cooler open close
lock unlock front back garage side meeting with schedule cancel calendar where did i leave plus
minus times divided by please what's forecast are could you can hey okay thanks away tell then noon midnight seven
thirty six morning nine night on off
"""

_WORD_LISTS = (_ONES, _TEENS, _TENS, _ORDINALS, _HOURS, _MINUTES, _DAY_PARTS, _DAYS, _MONTHS, _CITIES,
               _COLOURS, _ROOMS, _OBJECTS, _SIZES, _PLACES_REL, _NAMES, _DEVICES, _OPENABLES, _ITEMS,
               _GENRES, _MEDIA, _BELONGINGS, _MESSAGES, _CHORES, _POLITE_PREFIX, _POLITE_SUFFIX,
               _QUESTION_PREFIX, ("hundred",))

VOCABULARY: tuple[str, ...] = tuple(sorted(
    {word for entries in _WORD_LISTS for entry in entries for word in entry.split()}
    | set(_TEMPLATE_WORDS.split())
))


def _clause(rng: _Rng, first: bool) -> list[str]:
    text, is_command = _pick(rng, _TEMPLATES)(rng)
    words = text.split()
    if first and is_command and _maybe(rng, 0.2):
        words = _pick(rng, _POLITE_PREFIX).split() + words
    elif first and not is_command and _maybe(rng, 0.1):
        words = _pick(rng, _QUESTION_PREFIX).split() + words
    if is_command and _maybe(rng, 0.1):
        words += _pick(rng, _POLITE_SUFFIX).split()
    return words


def _sentence(rng: _Rng, min_words: int, max_words: int) -> str:
    # Rejection sampling: natural clauses, joined by "and (then)" when too short or at random.
    for _ in range(10_000):
        words = _clause(rng, first=True)
        while len(words) < min_words or (len(words) + 4 <= max_words and _maybe(rng, 0.08)):
            words += ["and", "then"] if _maybe(rng, 0.5) else ["and"]
            words += _clause(rng, first=False)
        if min_words <= len(words) <= max_words:
            return " ".join(words)
    raise RuntimeError(f"could not generate a sentence of {min_words}..{max_words} words")


def generate_sentences(n: int, rng: np.random.Generator, min_words: int = 3, max_words: int = 12) -> list[str]:
    """`n` lower-case sentences of min_words..max_words words, all from VOCABULARY."""
    if not MIN_WORDS_LIMIT <= min_words <= max_words <= MAX_WORDS_LIMIT:
        raise ValueError(
            f"need {MIN_WORDS_LIMIT} <= min_words <= max_words <= {MAX_WORDS_LIMIT}, got {min_words}, {max_words}"
        )
    return [_sentence(rng, min_words, max_words) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Configuration

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
    """`[data.synthetic]` in the TOML config. Plain types only."""

    seed: int = 0
    train_utterances: int = 2000
    dev_utterances: int = 200
    test_utterances: int = 200
    min_words: int = 3
    max_words: int = 12
    rate_min: int = 150  # words per minute
    rate_max: int = 200
    pitch_min: int = 20  # eSpeak pitch 0..100, 50 = the voice's own
    pitch_max: int = 80
    snr_db_min: float = 25.0
    snr_db_max: float = 45.0
    pad_max_s: float = 0.3  # silence added before and after the speech (each drawn in [0, pad_max_s])
    accents: list[str] = field(default_factory=lambda: list(espeak.ENGLISH_ACCENTS))
    train_variants: list[str] = field(default_factory=lambda: list(_DEFAULT_TRAIN_VARIANTS))
    dev_variants: list[str] = field(default_factory=lambda: list(_DEFAULT_DEV_VARIANTS))
    test_variants: list[str] = field(default_factory=lambda: list(_DEFAULT_TEST_VARIANTS))

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
        self._check_voices(fail)

    def _check_range(self, name: str, low: int, high: int, fail: Callable[[str, str], None]) -> None:
        lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
        if not low <= lo <= high:
            fail(f"{name}_min", f"must be in [{low}, {high}], got {lo}")
        if not low <= hi <= high:
            fail(f"{name}_max", f"must be in [{low}, {high}], got {hi}")
        if hi < lo:
            fail(f"{name}_max", f"must be >= {name}_min ({lo}), got {hi}")

    def _check_voices(self, fail: Callable[[str, str], None]) -> None:
        if not self.accents:
            fail("accents", "must not be empty")
        for name in ("accents",) + tuple(f"{s}_variants" for s in SPLITS):
            values = getattr(self, name)
            if not values:
                fail(name, "must not be empty")
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                fail(name, f"lists {duplicates[0]!r} more than once")
        for accent in self.accents:
            try:
                espeak.validate_accent(accent)
            except ValueError as exc:
                fail("accents", str(exc))
        for split in SPLITS:
            name = f"{split}_variants"
            for variant in getattr(self, name):
                try:
                    espeak.validate_voice(self.accents[0], variant)
                except ValueError as exc:
                    fail(name, str(exc))
                if variant in espeak.NONDETERMINISTIC_VARIANTS:
                    fail(name, f"variant {variant!r} is not reproducible (its breath noise differs "
                               f"between processes), so it cannot be part of a bit-exact corpus; "
                               f"avoid {', '.join(sorted(espeak.NONDETERMINISTIC_VARIANTS))}")
        for i, first in enumerate(SPLITS):
            for second in SPLITS[i + 1:]:
                shared = [v for v in getattr(self, f"{first}_variants") if v in getattr(self, f"{second}_variants")]
                if shared:
                    fail(f"{second}_variants", f"variant {shared[0]!r} is also in {FIELD_PREFIX}.{first}_variants; "
                                               f"the splits must use disjoint voices")


def config_hash(cfg: SyntheticConfig) -> str:
    """First 12 hex chars of sha256 over the config (sorted JSON), format and eSpeak versions."""
    payload = {"config": asdict(cfg), "format_version": CORPUS_FORMAT_VERSION, "espeak": espeak.version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Planning (all random draws) and rendering (deterministic given a plan)


@dataclass(frozen=True)
class _Job:
    split: str
    utt_id: str
    text: str
    accent: str
    variant: str
    rate_wpm: int
    pitch: int
    snr_db: float
    pink_noise: bool
    noise_seed: int
    lead_s: float
    trail_s: float
    out_path: str  # where the worker writes the FLAC (inside the partial folder)


def _plan_split(cfg: SyntheticConfig, split: str, audio_root: Path) -> list[_Job]:
    """All draws of one split, in a fixed order, from its own generator (seed, split number):
    dev and test stay the same utterances when only the train size changes."""
    n = getattr(cfg, f"{split}_utterances")
    variants = getattr(cfg, f"{split}_variants")
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    texts = generate_sentences(n, rng, cfg.min_words, cfg.max_words)
    accent_ix = rng.integers(len(cfg.accents), size=n)
    variant_ix = rng.integers(len(variants), size=n)
    rates = rng.integers(cfg.rate_min, cfg.rate_max + 1, size=n)
    pitches = rng.integers(cfg.pitch_min, cfg.pitch_max + 1, size=n)
    snrs = rng.uniform(cfg.snr_db_min, cfg.snr_db_max, size=n)
    pink = rng.random(size=n) < 0.5
    noise_seeds = rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)
    leads = rng.uniform(0.0, cfg.pad_max_s, size=n)
    trails = rng.uniform(0.0, cfg.pad_max_s, size=n)
    jobs = []
    for i in range(n):
        utt_id = f"synth-{split}-{i:05d}"
        jobs.append(_Job(
            split=split, utt_id=utt_id, text=texts[i], accent=cfg.accents[accent_ix[i]],
            variant=variants[variant_ix[i]], rate_wpm=int(rates[i]), pitch=int(pitches[i]),
            snr_db=float(snrs[i]), pink_noise=bool(pink[i]), noise_seed=int(noise_seeds[i]),
            lead_s=float(leads[i]), trail_s=float(trails[i]),
            out_path=str(audio_root / split / f"{utt_id}.flac"),
        ))
    return jobs


def _trim_silence(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut edges quieter than TRIM_THRESHOLD_DB below the peak, keeping TRIM_MARGIN_S of them."""
    level = np.abs(wave)
    loud = np.flatnonzero(level > level.max() * 10 ** (TRIM_THRESHOLD_DB / 20))
    margin = int(TRIM_MARGIN_S * sample_rate)
    return wave[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def _noise(rng: np.random.Generator, n: int, pink: bool) -> np.ndarray:
    """Unit-RMS white or pink (1/f power) noise, (n,) float64."""
    white = rng.standard_normal(n)
    if pink and n > 2:
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.shape[0], dtype=np.float64)
        freqs[0] = freqs[1]  # avoid dividing by zero; DC gets the lowest band's gain
        white = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return white / np.sqrt(np.mean(white ** 2))


def _render(job: _Job) -> int:
    """Synthesise, resample, trim, pad, add noise, normalise and write one utterance; returns samples."""
    raw = espeak.synthesize(job.text, job.accent, job.variant, job.rate_wpm, job.pitch)  # int16 (n,)
    if raw.size == 0 or not np.any(raw):
        raise RuntimeError(f"{job.utt_id}: eSpeak produced no sound for voice {job.accent}+{job.variant}: {job.text!r}")
    wave = torch.from_numpy(raw.astype(np.float32) / 32768.0)
    speech = resample(wave, espeak.sample_rate(), SAMPLE_RATE).numpy().astype(np.float64)  # (samples,)
    speech = _trim_silence(speech, SAMPLE_RATE)
    speech_power = float(np.mean(speech ** 2))
    lead, trail = round(job.lead_s * SAMPLE_RATE), round(job.trail_s * SAMPLE_RATE)
    signal = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    noise = _noise(np.random.default_rng(job.noise_seed), signal.shape[0], job.pink_noise)
    mixed = signal + noise * math.sqrt(speech_power / 10 ** (job.snr_db / 10))
    mixed *= PEAK_LEVEL / np.max(np.abs(mixed))
    pcm = np.round(mixed * 32767).astype(np.int16)
    soundfile.write(job.out_path, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return int(pcm.shape[0])


def _init_worker() -> None:
    # One thread: no oversubscription with several workers, and the same float path in every worker.
    torch.set_num_threads(1)
    espeak.initialize()


# ---------------------------------------------------------------------------------------------
# The cache


def _corpus_dir(cfg: SyntheticConfig, cache_root: Path) -> Path:
    return Path(cache_root) / f"synthetic-{config_hash(cfg)}"


def _read_corpus(root: Path, cfg: SyntheticConfig) -> dict[str, list[Utterance]]:
    """Read a complete corpus; paths are rebuilt from `root` so a moved cache still works."""
    corpus = {}
    for split in SPLITS:
        utterances = read_manifest(root / f"{split}.tsv")
        expected = getattr(cfg, f"{split}_utterances")
        if len(utterances) != expected:
            raise DataError(f"{root / f'{split}.tsv'}: {len(utterances)} utterances, config says {expected}")
        corpus[split] = [
            Utterance(u.id, str(root / "audio" / split / f"{u.id}.flac"), u.duration, u.text, u.speaker)
            for u in utterances
        ]
    return corpus


def _remove_stale_partials(root: Path) -> None:
    """Remove partial folders of this corpus left by dead processes on this host."""
    prefix = f"{root.name}.partial-{socket.gethostname()}-"
    for path in root.parent.glob(f"{root.name}.partial-*"):
        if not path.name.startswith(prefix):
            continue  # another host's build: its pid means nothing here
        try:
            pid = int(path.name[len(prefix):])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _generate(cfg: SyntheticConfig, root: Path, workers: int) -> dict[str, list[Utterance]]:
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    partial = root.with_name(f"{root.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        jobs = [job for split in SPLITS for job in _plan_split(cfg, split, partial / "audio")]
        for split in SPLITS:
            (partial / "audio" / split).mkdir(parents=True)
        start = time.perf_counter()
        print(f"synthetic corpus: generating {len(jobs)} utterances with {workers} worker(s) into {root}",
              file=sys.stderr, flush=True)
        lengths: list[int] = []
        context = multiprocessing.get_context("spawn")  # eSpeak state is per process; no fork of torch
        with context.Pool(workers, initializer=_init_worker) as pool:
            for n_samples in pool.imap(_render, jobs, chunksize=4):
                lengths.append(n_samples)
                if len(lengths) % PROGRESS_EVERY == 0:
                    print(f"synthetic corpus: {len(lengths)}/{len(jobs)} utterances "
                          f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
        corpus: dict[str, list[Utterance]] = {split: [] for split in SPLITS}
        for job, n_samples in zip(jobs, lengths):
            corpus[job.split].append(Utterance(
                id=job.utt_id, path=str(root / "audio" / job.split / f"{job.utt_id}.flac"),
                duration=n_samples / SAMPLE_RATE, text=job.text, speaker=f"{job.accent}+{job.variant}",
            ))
        for split in SPLITS:
            write_manifest(partial / f"{split}.tsv", corpus[split])
        info = {"format_version": CORPUS_FORMAT_VERSION, "espeak_version": espeak.version(),
                "hash": config_hash(cfg), "config": asdict(cfg)}
        (partial / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        (partial / COMPLETE_MARKER).write_text("")  # last: the folder is now whole
        hours = sum(lengths) / SAMPLE_RATE / 3600
        print(f"synthetic corpus: {len(jobs)} utterances, {hours:.2f} h of audio, "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        if root.exists():
            if (root / COMPLETE_MARKER).is_file():  # a concurrent build finished first: use it
                return _read_corpus(root, cfg)
            shutil.rmtree(root)  # an incomplete folder (crash, or marker removed): replace it
        try:
            os.rename(partial, root)
        except OSError:
            if (root / COMPLETE_MARKER).is_file():  # lost a race against a concurrent build
                return _read_corpus(root, cfg)
            raise
        return _read_corpus(root, cfg)  # as a cached build returns it (durations rounded in the TSV)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def build_synthetic_corpus(cfg: SyntheticConfig, cache_root: Path, workers: int = 2) -> dict[str, list[Utterance]]:
    """Build (or reuse) the corpus for `cfg` under cache_root; returns {"train", "dev", "test"} lists.

    Raises ValueError naming the config field on a bad config. Generation uses "spawn" worker
    processes, so a script calling this must guard its entry point with `if __name__ == "__main__":`.
    """
    cfg.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = _corpus_dir(cfg, Path(cache_root))
    if (root / COMPLETE_MARKER).is_file():
        try:
            return _read_corpus(root, cfg)
        except DataError as exc:
            print(f"synthetic corpus: {root} is damaged ({exc}); regenerating", file=sys.stderr, flush=True)
            (root / COMPLETE_MARKER).unlink(missing_ok=True)
    return _generate(cfg, root, workers)
