"""Command-line entry points of the steps: a frozen config dataclass <-> flags and JSON."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import llm_hardneg.components.common.env  # noqa: F401

# Errors that bad input, flags or files cause (a one-line message is enough); anything else is a bug.
USER_ERRORS = (ValueError, OSError)


def user_error(error: BaseException) -> BaseException | None:
    """The USER_ERRORS exception that `error` is or was raised from (Beam's DirectRunner re-raises a
    transform's error as a RuntimeError whose context is the original), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def parse_value(text: str, default: Any) -> Any:
    """Parses a flag value to the type of the field's default."""
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(default, tuple):
        return tuple(type(default[0])(t) if default else t for t in text.split(",") if t)
    return type(default)(text) if default is not None else text


def field_docs(cls: type, width: int = 110) -> dict[str, str]:
    """Each field's entry in the class docstring ('name: text' or 'a, b: text' at the start of a line), as
    its first sentence on one line (cut at `width` characters); fields without an entry are left out."""
    entries = re.split(r"\n(?=\S)", inspect.getdoc(cls) or "")  # an entry starts unindented, goes on indented
    docs = {}
    for entry in entries:
        match = re.match(r"([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.*)", entry, re.S)
        if not match:
            continue
        text = " ".join(match.group(2).split())
        sentence = re.split(r"(?<=[a-z0-9)'`])\. ", text, maxsplit=1)[0].rstrip(".")
        line = sentence if len(sentence) <= width else sentence[:width - 3].rsplit(" ", 1)[0] + " ..."
        for name in match.group(1).split(", "):
            docs[name] = line
    return docs


def add_config_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Adds --<prefix><field> for every field of the dataclass `cls`, with the first sentence of the field's
    docstring entry and its default as help."""
    group = parser.add_argument_group(prefix.rstrip(".") or cls.__name__)
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else None
        text = f"{docs[field.name]} " if field.name in docs else ""
        group.add_argument(f"--{prefix}{field.name}", dest=f"{prefix}{field.name}", default=None,
                           metavar=type(default).__name__.upper(),
                           help=f"{text}(default: {default!r})".replace("%", "%%"))


def config_overrides(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The flags given for `cls`, parsed to field types; a bad value exits naming the flag."""
    out = {}
    for field in dataclasses.fields(cls):
        text = getattr(args, f"{prefix}{field.name}", None)
        if text is not None:
            try:
                out[field.name] = parse_value(text, field.default)
            except ValueError as error:
                raise SystemExit(f"--{prefix}{field.name}: {error}") from None
    return out


def config_from_json(cls: type, payload: str):
    """Rebuilds a config from JSON (lists become tuples where the default is a tuple)."""
    values = json.loads(payload)
    for field in dataclasses.fields(cls):
        if isinstance(field.default, tuple) and field.name in values:
            values[field.name] = tuple(values[field.name])
    return cls(**values)


def step_main(cls: type, paths: Sequence[str], run: Callable, description: str,
              argv: Sequence[str] | None = None, beam: bool = False) -> int:
    """A step's command line: --<path> for each path argument, the config's flags (or
    --config-json), and --beam-arg=... for Beam steps; calls run(config, *paths[, beam_args]).

    An error of the input, the flags or the files (ValueError and its kin, USER_ERRORS, also when a Beam
    runner re-raises one from a transform) ends with its one-line message and status 1; --verbose shows its
    traceback (and Beam's own log of it). Other errors are bugs and keep their traceback."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--verbose", action="store_true", help="show the traceback of input errors too")
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True)
    parser.add_argument("--config-json", default=None, help="the whole config as JSON (flags override it)")
    if beam:
        parser.add_argument("--beam-arg", action="append", default=None,
                            help="a Beam option, as --beam-arg=--runner=DataflowRunner; repeatable")
    add_config_flags(parser, cls)
    args = parser.parse_args(argv)
    beam_log = logging.getLogger("apache_beam")
    level = beam_log.level
    if beam and not args.verbose:  # a failing bundle's ERROR log repeats the traceback that --verbose shows
        beam_log.setLevel(logging.CRITICAL)
    try:
        base = json.loads(args.config_json) if args.config_json else {}
        config = config_from_json(cls, json.dumps({**base, **config_overrides(args, cls)}))
        extra = [args.beam_arg] if beam else []
        run(config, *[getattr(args, name) for name in paths], *extra)
    except Exception as error:
        cause = user_error(error)
        if args.verbose or cause is None:
            raise
        message = re.sub(r" \[while running '[^']*'\]", "", str(cause))  # Beam's wrapping of a step's error
        print(f"error: {message}\n(run with --verbose for the traceback)", file=sys.stderr)
        return 1
    finally:
        beam_log.setLevel(level)
    return 0
