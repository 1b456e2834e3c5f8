"""Plain option-value coercion, so running a command never imports pydantic.

typer 0.2x converts every option value through a pydantic TypeAdapter; importing pydantic for
that costs more than importing typer itself and would blow the CLI's startup budget. crm's
options are only str, bool, int, float, Path, Enum and lists of those, so for them this module swaps in direct
conversion with typer's own path and choice checks. Any other type keeps typer's coercion, and
on a typer without this machinery (older releases coerce with click types) it does nothing.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

try:
    from typer._click.exceptions import BadParameter
    from typer._coercion import RuntimeParam
    from typer._param_types import coerce_cli_choice, coerce_cli_path
    from typer.core import _TyperParameter
except ImportError:  # pragma: no cover - a typer that coerces without pydantic
    RuntimeParam = None


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"", "0", "false", "f", "no", "n", "off"}


def _plain_type(annotation: Any) -> bool:
    return annotation in (str, int, float, bool) or (isinstance(annotation, type) and issubclass(annotation, (Path, Enum)))


def _supported(descriptor: Any) -> bool:
    info = descriptor.parameter_info
    if descriptor.file_annotation is not None or getattr(info, "parser", None) is not None:
        return False
    annotation = descriptor.annotation
    if get_origin(annotation) is list:
        return len(get_args(annotation)) == 1 and _plain_type(get_args(annotation)[0])
    return _plain_type(annotation)


if RuntimeParam is not None:

    class PlainParam(RuntimeParam):  # no new fields: RuntimeParam's dataclass methods serve it
        """Coerces str, bool, int and float (with min/max), Path (with typer's exists/dir checks) and Enum values."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if get_origin(self.annotation) is list:
                item = get_args(self.annotation)[0]
                return [self._one(item, v, param, ctx) for v in value]
            return self._one(self.annotation, value, param, ctx)

        def _one(self, annotation: Any, value: Any, param: Any, ctx: Any) -> Any:
            info = self.parameter_info
            if annotation is str:
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if annotation is bool:
                return _boolean(value, param, ctx)
            if annotation is int:
                return _integer(value, param, ctx)
            if annotation is float:
                return _decimal(value, param, ctx)
            if issubclass(annotation, Enum):
                try:
                    return coerce_cli_choice(value, choices=list(annotation),
                                             case_sensitive=info.case_sensitive, ctx=ctx)
                except ValueError as exc:
                    raise BadParameter(str(exc), ctx=ctx, param=param) from None
            path_type = info.path_type or annotation
            return coerce_cli_path(value if isinstance(value, path_type) else path_type(value), info,
                                   path_type=path_type, param=param, ctx=ctx)


def _boolean(value: Any, param: Any, ctx: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)


def _integer(value: Any, param: Any, ctx: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise BadParameter(f"{value!r} is not a valid integer.", ctx=ctx, param=param) from None
    return _within(number, param, ctx)


def _decimal(value: Any, param: Any, ctx: Any) -> float:
    """A finite float: "nan" would pass every bound (each comparison with it is false)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise BadParameter(f"{value!r} is not a valid number.", ctx=ctx, param=param) from None
    if not math.isfinite(number):
        raise BadParameter(f"{value!r} is not a finite number.", ctx=ctx, param=param)
    return _within(number, param, ctx)


def _within(number: Any, param: Any, ctx: Any) -> Any:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = " and ".join(part for part in (
            f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "") if part)
        raise BadParameter(f"{number} is not in the range {bounds}.", ctx=ctx, param=param)
    return number


def install() -> None:
    """Make typer build a PlainParam for every supported option (help options included)."""
    if RuntimeParam is None or getattr(_TyperParameter.get_runtime_param, "plain", False):
        return
    typer_get_runtime_param = _TyperParameter.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None and _supported(self.type_descriptor):
            descriptor = self.type_descriptor
            self._runtime_param = PlainParam(parameter_info=descriptor.parameter_info,
                                             annotation=descriptor.annotation)
        return typer_get_runtime_param(self)

    get_runtime_param.plain = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param
