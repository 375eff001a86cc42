"""Seeded command-style English sentences over a closed vocabulary (the synthetic corpus's transcripts):
templates with slots, free variation, clauses joined until a length in [min_words, max_words].
Entries may hold several words ("living room"); every word ends up in VOCABULARY."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from study.config.synthetic import MAX_WORDS_LIMIT, MIN_WORDS_LIMIT

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
