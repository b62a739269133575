"""Recipes: `mpq search --config recipe.toml` takes its options from a file, and every plan.json that
`mpq search` writes records the options of its run under "recipe", so `--config plan.json` repeats it.

A recipe is a table of option names (as on the command line, without the dashes; `max-probes` and
`max_probes` both work) and values: a number or string for one value, a list for the repeatable options
(`budget = ["4MB", "20GBOPs"]`, `keep = ["fc=8"]`) and for widths (`bits = [4, 6, 8]`,
`act-bits = ["none", 8]`), true for a switch. Options given on the command line take precedence
(the repeatable ones add up). Reading one runs no code: TOML or JSON, data only, and a model, data or loss
named as code (`package.module:attr`, `file.py:attr`) is taken only from the command line: a recipe that names
one is refused unless the command line gives that option itself (then the recipe's value is dropped unread).
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


CODE_OPTIONS = ("model", "data", "eval_data", "loss")  # what may name Python code to import and call
_FILE_SUFFIXES = {
    "model": (".pt2",),
    "data": (".npz", ".pt", ".pth", ".txt", ".jsonl"),
    "eval_data": (".npz", ".pt", ".pth", ".txt", ".jsonl"),
    "loss": (),
}
_BUILT_IN_LOSSES = ("labels", "fp32", "mse", "kl")


def names_code(dest: str, text: str) -> bool:
    """Whether the value `text` of option `dest` would make mpq import a module (mpq.inputs.specs,
    mpq.sensitivity.losses): anything but an hf: folder or .pt2 for --model, a file or folder for --data."""
    if dest not in CODE_OPTIONS:
        return False
    if dest == "model" and text.startswith("hf:"):
        return False
    if dest == "loss":
        return text not in _BUILT_IN_LOSSES
    path = Path(text)
    if path.suffix in _FILE_SUFFIXES[dest]:
        return False
    return dest == "model" or (":" in text and not path.is_dir())


def read_recipe(path: str) -> dict:
    """The recipe in a .toml file, or the "recipe" a plan.json recorded."""
    file = Path(path)
    try:
        if not file.is_file():  # a FIFO or a device would block or never end
            raise MpqError(
                f"the recipe {path} is not a file: give a recipe .toml, or a plan.json written by `mpq search`"
            )
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise MpqError(f"cannot read the recipe {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MpqError(f"the recipe {path} is not UTF-8 text: save it as UTF-8 TOML (or give a plan.json)") from None
    try:
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MpqError(
            f"{path} is not a valid {'JSON' if file.suffix == '.json' else 'TOML'} recipe ({first_line(exc)}): "
            "fix it or give the options on the command line"
        ) from None
    if file.suffix == ".json":
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict):
            raise MpqError(f"{path} records no recipe: give a recipe .toml, or a plan.json written by `mpq search`")
        data = data["recipe"]
    return data


def recipe_tokens(sub: argparse.ArgumentParser, recipe: dict, where: str, code: dict | None = None) -> list[str]:
    """The command-line tokens a recipe stands for, checked against the subcommand's options. A value that
    names code is left out and put in `code` (dest -> (flag, value)) for expand_config to refuse."""
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
                f"{where} names {key!r}, which is not an option of `mpq {sub.prog.split()[-1]}`: "
                f"see `{sub.prog} --help`"
            )
        more = _tokens(action, value, key, where)
        if action.dest in CODE_OPTIONS and any(names_code(action.dest, t) for t in more[1::2]):
            if code is None:
                raise MpqError(_code_refusal(where, action, more[1]))
            code[action.dest] = (action, more[1])
            continue
        tokens += more
    return tokens


def _code_refusal(where: str, action: argparse.Action, text: str) -> str:
    flag = action.option_strings[-1]
    return (
        f"{where} names the {flag.lstrip('-').replace('-', ' ')} as code ({text!r}), which mpq never imports from a "
        f"file it reads: pass {flag} {text} on the command line"
    )


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


def _config_at(sub: argparse.ArgumentParser, argv: list[str]) -> tuple[int, str | None]:
    """Where `--config` is in argv (also as `--config=FILE` or an abbreviation argparse would take), and the
    file when it is written with "="; (-1, None) when absent."""
    options = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
    for i, token in enumerate(argv):
        if token == "--":
            break
        name, eq, value = token.partition("=")
        if len(name) > 2 and "--config".startswith(name) and [s for s in options if s.startswith(name)] == ["--config"]:
            return i, (value if eq else None)
    return -1, None


def expand_config(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`argv` with `--config FILE` replaced by the recipe's options, placed before the command line's own.
    A recipe's model, data or loss given as code is refused unless the command line gives that option too."""
    if len(argv) < 2 or argv[0] not in RECIPE_COMMANDS:
        return argv
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
    i, path = _config_at(sub, argv)
    if i < 0:
        return argv
    if path is None and i + 1 >= len(argv):
        raise MpqError("--config needs a file: a recipe .toml, or a plan.json written by `mpq search`")
    end = i + 1 if path is not None else i + 2
    path, rest = path if path is not None else argv[i + 1], argv[1:i] + argv[end:]
    code: dict = {}
    expanded = [argv[0], *recipe_tokens(sub, read_recipe(path), path, code), *rest]
    if code:
        given = parser.parse_args(expanded)  # the command line's own values; the recipe's code is left out
        for dest, (action, text) in code.items():
            if getattr(given, dest, None) is None:
                raise MpqError(_code_refusal(path, action, text))
    return expanded


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
