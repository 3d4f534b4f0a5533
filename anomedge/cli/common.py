"""CLI plumbing: typed errors → one line on stderr and the error's exit code; shared options."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from ..errors import AnomedgeError
from ..registry_db import format_table  # noqa: F401  (one table formatter for every CLI)


def one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a click command body; an AnomedgeError prints ``error: …`` and exits with its code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AnomedgeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("k=3", "reduction={\\"name\\":\\"max\\"}")`` → {"k": 3, ...}; values parsed as JSON when they can be."""
    params: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"'{pair}': expected KEY=VALUE", param_hint="--param")
        key, value = pair.split("=", 1)
        try:
            params[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            params[key.strip().replace("-", "_")] = value
    return params
