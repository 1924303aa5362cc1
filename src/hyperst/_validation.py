"""Checks on user input, with one wording per pattern.

This is the only module that phrases "Expected `x` to be …, found …" and "Key … not found …" messages; the
rest of the package calls these helpers: :func:`expected` (a wrong value), :func:`expected_type` (a wrong
type, named), :func:`expected_shape` (a wrong shape), :func:`expected_to` (a requirement other than "to be")
and :func:`expected_in` (wrong contents of a container).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "check_choice",
    "check_key",
    "check_positive",
    "expected",
    "expected_in",
    "expected_shape",
    "expected_to",
    "expected_type",
    "key_not_found",
    "pick_one",
    "raise_collected",
]


def expected(name: str, what: str, found: Any) -> str:
    """Phrase a wrong-value message: ``Expected `name` to be what, found `found`.``."""
    return f"Expected `{name}` to be {what}, found `{found!r}`."


def expected_type(name: str, what: str, value: Any) -> str:
    """Phrase a wrong-type message naming the type found: ``Expected `name` to be what, found `TypeName`.``."""
    return f"Expected `{name}` to be {what}, found `{type(value).__name__}`."


def expected_shape(name: str, shape: str, found: Sequence[int]) -> str:
    """Phrase a wrong-shape message: ``Expected `name` to have shape shape, found (found).``."""
    return f"Expected `{name}` to have shape {shape}, found {tuple(found)}."


def expected_to(name: str, requirement: str, found: Any) -> str:
    """Phrase a requirement other than "to be": ``Expected `name` to requirement, found found.``.

    ``found`` is written as given (``str``), so the caller phrases it, e.g. ``"keys ['a']"`` or ``"`3`"``.
    """
    return f"Expected `{name}` to {requirement}, found {found}."


def expected_in(what: str, where: str, found: str) -> str:
    """Phrase wrong contents of a container: ``Expected what in where, found found.``."""
    return f"Expected {what} in {where}, found {found}."


def key_not_found(key: str, where: str, available: Iterable[str], fix: str | None = None) -> str:
    """Phrase a missing-key message, listing what is there and an optional fix-it sentence."""
    msg = f"Key `{key!r}` not found in `{where}`. Available keys: {sorted(map(str, available))}."
    if fix:
        msg = f"{msg} {fix}"
    return msg


def check_key(key: str, container: Any, where: str, fix: str | None = None) -> None:
    """Raise :class:`KeyError` if ``key`` is not in ``container``."""
    if key not in container:
        raise KeyError(key_not_found(key, where, list(container.keys()), fix))


def check_positive(value: float, name: str) -> float:
    """Return ``value`` if it is a finite number > 0, else raise :class:`ValueError`."""
    import math

    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(expected(name, "a positive finite number", value))
    return value


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise :class:`ValueError`."""
    if value not in choices:
        raise ValueError(expected(name, f"one of {list(choices)}", value))
    return value


def pick_one(
    key: str | None, candidates: Sequence[str], name: str, where: str, what: str, *, fix: str | None = None
) -> str:
    """Resolve ``key`` among ``candidates``: the given one, or the only candidate.

    Parameters
    ----------
    key
        What the user passed (``None`` to infer).
    candidates
        Valid choices.
    name
        Argument name, e.g. ``"image_key"``.
    where
        Container the candidates come from, e.g. ``"sdata.images"``.
    what
        Human description of a valid candidate, e.g. ``"an RGB image aligned with the spots"``.
    fix
        Fix-it sentence appended when there is no candidate at all (how to add one).

    Returns
    -------
    The resolved key.
    """
    if key is not None:
        if key not in candidates:
            msg = f"{expected_to(name, f'name {what}', f'`{key!r}`')} Candidates in `{where}`: {sorted(candidates)}."
            raise KeyError(msg)
        return key
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        msg = f"Found no {what} in `{where}`." + (f" {fix}" if fix else "")
        raise ValueError(msg)
    msg = f"Found several candidates for the {what} in `{where}`: {sorted(candidates)}. Pass `{name}=` to choose one."
    raise ValueError(msg)


def raise_collected(problems: list[str], subject: str, exc: type[Exception] = ValueError) -> None:
    """Raise one error listing every problem found, so users fix everything in one pass."""
    if not problems:
        return
    if len(problems) == 1:
        msg = f"{subject}: {problems[0]}"
    else:
        lines = "\n".join(f"  - {p}" for p in problems)
        msg = f"{subject} has {len(problems)} problems:\n{lines}"
    raise exc(msg)
