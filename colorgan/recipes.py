"""Recipes: TOML files whose sections map onto library functions, validated against those functions' signatures.

A recipe states only what differs from the defaults; each default lives once, in a signature. Every unknown key
and wrong type is reported together, naming the file, before anything heavy starts. The resolved recipe (every
value a run used) is written next to each artefact so any result can be re-run.
"""
from __future__ import annotations

import difflib
import inspect
import math
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

from .utils import ColorganError

__all__ = ["Section", "load_recipe", "parse_override", "resolve", "dumps_toml", "RecipeError"]


class RecipeError(ColorganError):
    "A recipe that does not fit the functions it configures; the message lists every problem."


class Section(typing.NamedTuple):
    """A recipe section: the function its keys configure, that function's parameters the recipe may not set, and
    limits on values: key -> (test, what the value should be), checked once the type is right."""
    fn: Callable
    fixed: tuple[str, ...] = ()
    limits: dict = {}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def whole(lo: int, hi: int | None = None, optional: bool = False) -> tuple[Callable, str]:
    "A limit: an integer from `lo` (to `hi`); None allowed when `optional`."
    def test(v):
        return (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and lo <= v
                                             and (hi is None or v <= hi))
    return test, f"a whole number from {lo}" + (f" to {hi}" if hi is not None else " up") + (" (or unset)" if optional
                                                                                            else "")


def number(lo: float, hi: float | None = None, low_open: bool = False, high_open: bool = False,
           optional: bool = False) -> tuple[Callable, str]:
    "A limit: a finite number in the interval from `lo` to `hi` (either end open); None allowed when `optional`."
    def test(v):
        if optional and v is None:
            return True
        return _finite(v) and (v > lo if low_open else v >= lo) and (hi is None or (v < hi if high_open else v <= hi))
    ends = f"{'(' if low_open else '['}{lo}, {hi if hi is not None else 'inf'}{')' if high_open or hi is None else ']'}"
    return test, f"a finite number in {ends}" + (" (or unset)" if optional else "")


def one_of(*choices) -> tuple[Callable, str]:
    return (lambda v: v in choices), "one of " + ", ".join(map(repr, choices))


def _params(section: Section) -> dict[str, inspect.Parameter]:
    skip = {"self", "cls", *section.fixed}
    return {n: p for n, p in inspect.signature(section.fn).parameters.items()
            if n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # third-party signatures (fastai) may not resolve; fall back to the defaults' types
        return {}


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint in (Any, inspect.Parameter.empty):
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if hint is os.PathLike:
        return isinstance(value, str)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _expected(param: inspect.Parameter, hints: dict) -> Any:
    if param.name in hints:
        return hints[param.name]
    d = param.default
    if d is inspect.Parameter.empty or d is None:
        return Any
    return float if isinstance(d, float) else type(d)


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_section(name: str, values: Any, section: Section) -> list[str]:
    if not isinstance(values, dict):
        return [f"[{name}] must be a table of keys, not {type(values).__name__}"]
    params, hints, problems = _params(section), _hints(section.fn), []
    for key, value in values.items():
        if key not in params:
            near = difflib.get_close_matches(key, list(params), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(params)}"
            problems.append(f"[{name}] unknown key '{key}'{hint}")
        elif not _type_ok(value, expected := _expected(params[key], hints)):
            problems.append(f"[{name}] {key} = {value!r} should be {_describe(expected)}")
        elif key in section.limits and not section.limits[key][0](value):
            problems.append(f"[{name}] {key} = {value!r} should be {section.limits[key][1]}")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in values]
    problems += [f"[{name}] {k} is required" for k in missing]
    return problems


def validate(recipe: dict, schema: dict[str, Section], source: str) -> None:
    "Raise one RecipeError listing every unknown section, unknown key, wrong type and missing key."
    problems = [f"unknown section [{s}]; known sections: {', '.join(schema)}" for s in recipe if s not in schema]
    for name, section in schema.items():
        problems += _check_section(name, recipe.get(name, {}), section)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise RecipeError(f"recipe {source} has {len(problems)} problem(s):\n{lines}")


def parse_override(text: str) -> tuple[str, str, Any]:
    "'fit.lr_max=3e-4' -> ('fit', 'lr_max', 0.0003); values are TOML, and a bare word is a string."
    target, sep, raw = text.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not key:
        raise RecipeError(f"override '{text}' should look like section.key=value, e.g. fit.lr_max=3e-4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def load_recipe(path: str | os.PathLike | dict | None, schema: dict[str, Section], overrides=()) -> dict:
    """Read a TOML recipe (or take a dict of sections, or none), apply `section.key=value` overrides, validate,
    and return it resolved."""
    recipe, source = {}, "(defaults)"
    if isinstance(path, dict):
        recipe, source = {s: dict(kv) for s, kv in path.items()}, "(dict)"
    elif path is not None:
        source = str(path)
        try:
            recipe = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipeError(f"recipe {path} does not exist") from None
        except IsADirectoryError:
            raise RecipeError(f"recipe {path} is a folder, not a TOML file") from None
        except UnicodeDecodeError as e:
            raise RecipeError(f"recipe {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"recipe {path} is not valid TOML: {e}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        recipe.setdefault(section, {})[key] = value
    if overrides:
        source += " with --set " + " ".join(overrides)
    validate(recipe, schema, source)
    return resolve(recipe, schema)


def resolve(recipe: dict, schema: dict[str, Section]) -> dict:
    "Every section with every key: the recipe's value where it has one, else the signature's default."
    out = {}
    for name, section in schema.items():
        given = recipe.get(name, {})
        out[name] = {k: given.get(k, p.default) for k, p in _params(section).items()}
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and abs(v) != float("inf") else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def dumps_toml(recipe: dict) -> str:
    "A resolved recipe as TOML; a key whose value is None (TOML has no null) is written as a comment."
    lines = []
    for name, values in recipe.items():
        lines.append(f"[{name}]")
        lines += [f"# {k} = (unset)" if v is None else f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
