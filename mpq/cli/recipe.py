"""Recipes: `mpq search --config recipe.toml` takes its options from a file, and every plan.json that
`mpq search` writes records the options of its run under "recipe", so `--config plan.json` repeats it.

A recipe is a table of option names (as on the command line, without the dashes; `max-probes` and
`max_probes` both work) and values: a number or string for one value, a list for the repeatable options
(`budget = ["4MB", "20GBOPs"]`, `keep = ["fc=8"]`) and for widths (`bits = [4, 6, 8]`,
`act-bits = ["none", 8]`), true for a switch. Options given on the command line take precedence
(the repeatable ones add up). Reading one runs no code: TOML or JSON, data only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpq.errors import MpqError, first_line

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

RECIPE_COMMANDS = ("search", "pareto")
NOT_RECORDED = {
    "config",
    "json",
    "quiet",
    "verbose",
    "command",
    "out",
    "cache_dir",
    "no_cache",
}  # where a run writes, not what it searches


def _actions(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in sub._actions if a.option_strings and a.dest not in ("help",)}


def read_recipe(path: str) -> dict:
    """The recipe in a .toml file, or the "recipe" a plan.json recorded."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise MpqError(f"cannot read the recipe {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MpqError(
            f"{path} is not a valid {'JSON' if file.suffix == '.json' else 'TOML'} recipe ({first_line(exc)}); fix it or give the options on the command line"
        ) from None
    if file.suffix == ".json":
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict):
            raise MpqError(f"{path} records no recipe: give a recipe .toml, or a plan.json written by `mpq search`")
        data = data["recipe"]
    return data


def recipe_tokens(sub: argparse.ArgumentParser, recipe: dict, where: str) -> list[str]:
    """The command-line tokens a recipe stands for, checked against the subcommand's options."""
    by_name = {
        s.lstrip("-").replace("-", "_"): a
        for a in _actions(sub).values()
        if a.dest != "config"
        for s in a.option_strings
    }
    tokens: list[str] = []
    for key, value in recipe.items():
        action = by_name.get(str(key).replace("-", "_"))
        if action is None:
            raise MpqError(
                f"{where} names {key!r}, which is not an option of `mpq {sub.prog.split()[-1]}`: see `{sub.prog} --help`"
            )
        tokens += _tokens(action, value, key, where)
    return tokens


def _tokens(action: argparse.Action, value, key: str, where: str) -> list[str]:
    flag = action.option_strings[-1]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)):
        if not isinstance(value, bool):
            raise MpqError(f"{where}: {key} is a switch: write {key} = true")
        return [flag] if value else []
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [t for item in items for t in (flag, _text(item))]
    if isinstance(value, list):
        return [flag, ",".join(_text(v) for v in value)]
    return [flag, _text(value)]


def _text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def expand_config(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`argv` with `--config FILE` replaced by the recipe's options, placed before the command line's own."""
    if len(argv) < 2 or argv[0] not in RECIPE_COMMANDS or "--config" not in argv:
        return argv
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise MpqError("--config needs a file: a recipe .toml, or a plan.json written by `mpq search`")
    path, rest = argv[i + 1], argv[1:i] + argv[i + 2 :]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
    return [argv[0], *recipe_tokens(sub, read_recipe(path), path), *rest]


def recipe_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The options of a parsed run as a recipe (what plan.json records), in the types a recipe file uses."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    recipe = {}
    for dest, action in _actions(sub).items():
        value, name = getattr(args, dest, None), action.option_strings[-1].lstrip("-")
        if dest in NOT_RECORDED:
            continue
        if isinstance(action, argparse._StoreConstAction):  # switches (store_true is one too)
            if value is not None and value == action.const and value != action.default:
                recipe[name] = True
        elif value is not None and value != []:
            recipe[name] = list(value) if isinstance(value, tuple) else value
    return recipe
