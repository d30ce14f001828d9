"""The words of TinyWorld: invented names and a small set of plain English nouns.

Every closed word class is a fixed tuple, so the world's vocabulary is known in advance
(a few hundred words) and a few-million-parameter model can learn all of it on a CPU.
Nouns that take an article (jobs, species, items) all begin with a consonant, so the
article is always "a" and no a/an rule is needed to generate or to check the text.
"""

from __future__ import annotations

import random

JOBS = (
    "baker", "farmer", "teacher", "doctor", "painter", "fisher", "tailor", "potter",
    "miller", "nurse", "builder", "singer", "gardener", "carpenter", "librarian", "cook",
    "sailor", "weaver", "smith", "driver",
)
SPECIES = (
    "dog", "cat", "rabbit", "parrot", "goat", "turtle", "hamster", "pony", "duck", "frog",
    "goldfish", "mouse",
)
FOODS = (
    "soup", "bread", "cheese", "apples", "pears", "rice", "noodles", "pie", "honey",
    "carrots", "plums", "porridge", "beans", "cake", "pancakes", "dumplings",
)
ITEMS = (
    "lamp", "kettle", "basket", "hat", "rope", "candle", "bucket", "ladder", "blanket",
    "teapot", "spoon", "broom", "mirror", "clock", "chair", "drum", "kite", "map", "shovel",
    "bell", "jar", "comb", "pillow", "scarf", "saddle", "lantern", "whistle", "book", "brush",
    "box",
)
REGIONS = ("north", "south", "east", "west")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEATHER = ("sunny", "rainy", "windy", "cold", "warm", "foggy")

# Pet names are shared between pets (two dogs may both be called Pip); person and town
# names are unique. The three sets never overlap, so a proper noun names one kind of thing.
PET_NAMES = (
    "Pip", "Bobo", "Fizz", "Mopsy", "Tuffy", "Zuzu", "Kiki", "Lulu", "Momo", "Pogo", "Rolo",
    "Sprocket", "Tiki", "Dot", "Fluff", "Gizmo", "Jinx", "Nibs", "Patch", "Pebble", "Rusty",
    "Scamp", "Sox", "Tango", "Twig", "Ziggy", "Bramble", "Clover", "Dusty", "Hopper", "Juno",
    "Maple", "Nutmeg", "Pickle", "Smudge", "Sprout",
)
NAME_STARTS = (
    "Ma", "Mi", "Lo", "Ta", "Be", "Da", "Fe", "Ga", "Hi", "Jo", "Ka", "Le", "Na", "No", "Pa",
    "Ri", "Sa", "So", "Ti", "Vi", "Wy", "Ze", "Ara", "Eli", "Ola", "Ume", "Bo", "Ce", "Du", "Ya",
)
NAME_ENDS = (
    "ra", "lo", "na", "ren", "dor", "lin", "sa", "vek", "mo", "rin", "ta", "bel", "nor", "lia",
    "dan", "ko", "mel", "sel", "wen", "zo", "ric", "nis", "bo", "tan",
)
TOWN_STARTS = (
    "Tol", "Ash", "Bram", "Cor", "Dun", "Elm", "Fen", "Glen", "Hart", "Kil", "Lin", "Mor",
    "Nor", "Oak", "Pen", "Quin", "Red", "Stan", "Thorn", "Wick",
)
TOWN_ENDS = ("bury", "ford", "ton", "wick", "mere", "dale", "by", "stead")


def plural(noun: str) -> str:
    """English plural of an item noun ("box" -> "boxes", "lamp" -> "lamps")."""
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


ITEM_PLURALS = tuple(plural(item) for item in ITEMS)


def person_name_pool() -> tuple[str, ...]:
    """Every possible person name, in a fixed order, minus clashes with other word lists.

    Two syllables ("Mi" + "ra" -> "Mira") keep names short and pronounceable. Clashes are
    removed so that a capitalised word in TinyWorld text names exactly one kind of thing.
    """
    taken = {w.lower() for w in PET_NAMES + DAYS + town_name_pool()}
    taken |= {w.lower() for w in JOBS + SPECIES + FOODS + ITEMS + ITEM_PLURALS + REGIONS + WEATHER}
    names = (start + end for start in NAME_STARTS for end in NAME_ENDS)
    return tuple(name for name in names if name.lower() not in taken)


def town_name_pool() -> tuple[str, ...]:
    """Every possible town name ("Tol" + "bury" -> "Tolbury"), in a fixed order."""
    return tuple(start + end for start in TOWN_STARTS for end in TOWN_ENDS)


def seeded_rng(seed: int, label: str) -> random.Random:
    """A ``random.Random`` for one purpose (``label``) of one seed, identical on every machine.

    String seeds are hashed with SHA-512 by ``random`` (not by ``hash()``), so the stream
    does not depend on PYTHONHASHSEED; the label keeps the purposes' streams independent.
    """
    check_seed(seed)
    return random.Random(f"tinyworld/{label}/{seed}")


def check_seed(seed: object, name: str = "seed") -> int:
    """Return ``seed`` if it is an int (not a bool), else raise ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name} must be an int (any integer), got {seed!r}")
    return seed
