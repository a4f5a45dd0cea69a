"""Farms: a farm as the builders take it (:class:`MuleFarm`), a farm as declared (:class:`FarmSpec`),
and the rule of farm names."""

from __future__ import annotations

from ..errors import MulesConfigurationError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Sequence

FARM_NAME_MAX = 254  # uWSGI copies the name into a 255-byte buffer (core/mule.c).

_FARM_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_FARM_NAME_CHARS = _FARM_NAME_FIRST | frozenset(".-")
_FARM_NAME_RULE = "farm names use letters, digits, '_', '-' and '.', and start with a letter, digit or '_'"
_CHAR_NAMES = {
    ":": "':' (uWSGI separates a farm name from its mule ids with it)",
    ",": "',' (uWSGI separates mule ids with it)",
    "#": "'#' (uWSGI config parsers cut the line there)",
    "%": "'%' (uWSGI expands magic variables there)",
    "'": "a quote",
    '"': "a quote",
}


def describe_char(char: str) -> str:
    if char in _CHAR_NAMES:
        return _CHAR_NAMES[char]
    if char.isspace():
        return "whitespace"
    return repr(char)


def validate_farm_name(name: object) -> str:
    """Check a farm name and return it.

    :param name: The farm name to check.
    :raises MulesConfigurationError: naming the farm and the character at fault.
    """
    if not isinstance(name, str):
        raise MulesConfigurationError(
            f"farm name {name!r} must be a string, not {type(name).__name__}", culprit=name)
    if not name:
        raise MulesConfigurationError("farm name is empty; " + _FARM_NAME_RULE, culprit=name)
    if len(name.encode()) > FARM_NAME_MAX:
        raise MulesConfigurationError(
            f"farm name {name[:20]!r}... is {len(name.encode())} bytes long; uWSGI keeps at most "
            f"{FARM_NAME_MAX}", culprit=name)
    if name[0] not in _FARM_NAME_FIRST or not _FARM_NAME_CHARS.issuperset(name):
        bad = next((c for c in name if c not in _FARM_NAME_CHARS), name[0])
        raise MulesConfigurationError(
            f"farm name {name!r} contains {describe_char(bad)}; {_FARM_NAME_RULE}", culprit=name)
    return name


class MuleFarm:
    """A mule farm declaration, as uwsgiconf's ``section.workers.mule_farm(name, mule_numbers)``.

    The object is never changed by the builders: farms given as a count are numbered when the
    declaration is built, not here.

    :param name: Farm name; letters, digits, ``_``, ``-`` and ``.``.
    :param mule_numbers: How many mules the farm has (an int, or a string of digits as uwsgiconf
        accepts), or the ids of its mules (a list of ints, starting at 1).
    :raises MulesConfigurationError: on an invalid name, a count below 1, or bad ids.
    """

    __slots__ = ("mule_numbers", "name")

    def __init__(self, name: str, mule_numbers: int | str | Sequence[int]) -> None:
        self.name = validate_farm_name(name)
        self.mule_numbers: int | tuple[int, ...] = farm_mules(name, mule_numbers)

    def __repr__(self) -> str:
        return f"MuleFarm({self.name!r}, {self.mule_numbers!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MuleFarm):
            return NotImplemented
        return (self.name, self.mule_numbers) == (other.name, other.mule_numbers)

    def __hash__(self) -> int:
        return hash((self.name, self.mule_numbers))


def farm_mules(name: str, mule_numbers: object) -> int | tuple[int, ...]:
    if isinstance(mule_numbers, str) and mule_numbers.strip().isdigit():
        mule_numbers = int(mule_numbers)
    if isinstance(mule_numbers, int) and not isinstance(mule_numbers, bool):
        if mule_numbers < 1:
            raise MulesConfigurationError(
                f"farm {name!r} needs at least 1 mule, got a count of {mule_numbers}", culprit=name)
        return mule_numbers
    if isinstance(mule_numbers, (list, tuple)):
        if not mule_numbers:
            raise MulesConfigurationError(f"farm {name!r} has an empty list of mules", culprit=name)
        ids: list[int] = []
        listed: set[int] = set()
        for item in mule_numbers:
            if isinstance(item, bool) or not isinstance(item, int):
                raise MulesConfigurationError(
                    f"farm {name!r}: mule id {item!r} is not an integer", culprit=name)
            if item < 1:
                raise MulesConfigurationError(
                    f"farm {name!r}: mule id {item} is out of range (mule ids start at 1)", culprit=name)
            if item in listed:
                raise MulesConfigurationError(f"farm {name!r} lists mule {item} twice", culprit=name)
            listed.add(item)
            ids.append(item)
        return tuple(ids)
    raise MulesConfigurationError(
        f"farm {name!r}: mule_numbers must be a count or a list of mule ids, not {mule_numbers!r}",
        culprit=name)


class FarmSpec:
    """A farm as declared: its name and the ids of its mules, in declared order.

    :param name: Farm name.
    :param mules: Mule ids (1-based).
    """

    __slots__ = ("mules", "name")

    def __init__(self, name: str, mules: tuple[int, ...]) -> None:
        self.name = name
        self.mules = mules

    def __repr__(self) -> str:
        return f"FarmSpec({self.name!r}, {self.mules!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FarmSpec):
            return NotImplemented
        return (self.name, self.mules) == (other.name, other.mules)

    def __hash__(self) -> int:
        return hash((self.name, self.mules))

    def option(self) -> str:
        """The value of this farm's uWSGI ``farm`` option, e.g. ``fast:1,2``."""
        return f"{self.name}:{','.join(map(str, self.mules))}"
