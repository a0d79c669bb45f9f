"""Command-line flags from config fields: one `--flag` per field, its help the field's doc.

The one place a run's config is assembled from a command line (`config_from_args`): a preset or
a saved run's config, then `--config FILE`, then every flag the user gave, each layer validated
by config.py's schema. Flags default to None, meaning "not given", so only what the user typed
overrides the layers below.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable

from .config import SECTIONS, Config, load_file, merge, preset


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one `--flag` per field of `cls` (default None = "not given"), help from its doc."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = typing.get_type_hints(cls)[f.name]
        if typing.get_origin(tp) is tuple:  # a list of ints: comma-separated on the command line
            base = _comma_list
        else:
            base = [a for a in typing.get_args(tp) if a is not type(None)][0] if typing.get_args(tp) else tp
        doc = f.metadata.get("doc", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        help_text = f"{doc} (default: {default})"
        if base is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=_parse_flag(base, _flag(f.name)),
                                choices=f.metadata.get("choices"), default=None, help=help_text)


def _parse_flag(tp: type, flag: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return tp(text)
        except ValueError:
            kind = {int: "an integer", float: "a number", _comma_list: "comma-separated integers, e.g. 64,64"}.get(
                tp, tp.__name__)
            raise argparse.ArgumentTypeError(f"{flag}: got {text!r}, expected {kind}") from None

    parse.__name__ = tp.__name__
    return parse


def from_flags(cls: type, args: argparse.Namespace, base: dict | None = None):
    """Defaults, then `base` (from a file), then every flag the user gave."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls.from_dict(values)


def _comma_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per field of every section (section names are not needed: fields are unique)."""
    for cls in SECTIONS.values():
        group = parser.add_argument_group(cls.section_name(), cls.__doc__)
        add_flags(group, cls)


def config_from_args(args: argparse.Namespace, *, preset_name: str | None = None, saved: dict | None = None,
                     defaults: dict | None = None) -> Config:
    """The one merge, in order: a saved run's config (resume) or the preset `preset_name`, then the
    command's own `defaults`, then the file of `--config` (if the command has it), then every flag given."""
    values = saved if saved is not None else preset(preset_name)
    values = merge(values, defaults or {})  # a copy: the layers below are never mutated
    if getattr(args, "config", None):
        values = merge(values, load_file(args.config))
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            given = getattr(args, f.name, None)
            if given is not None:
                values.setdefault(section, {})[f.name] = given
    return Config.from_dict(values)
