"""Widgets of the Train form built from ``TrainConfig``'s field metadata (``config.option``): label, help, default,
bounds (min, max, step) and choices come from the one definition in ``breakhis_core.config``, never re-typed here.

Each function draws one widget for one field in ``container`` (``st`` or a column) under ``key`` and returns its
value; ``help`` may be given to replace the field's help with a longer one for people.
"""

from __future__ import annotations

from collections.abc import Callable

from breakhis_core.config import config_field


def _label(name: str) -> str:
    return config_field(name).metadata["label"] or name.replace("_", " ").capitalize()


def _help(name: str, help: str | None) -> str:
    return help if help is not None else config_field(name).metadata["help"]


def number_field(container, name: str, key: str, *, help: str | None = None, **options):
    """A ``number_input`` for the numeric field ``name``: its label, default, bounds and step (ints stay ints).

    ``options`` go to ``number_input`` as they are (e.g. ``format``, or a narrower ``max_value`` of this form's
    own, such as the official fold's)."""
    field = config_field(name)
    bounds = field.metadata["bounds"]
    kind = int if field.type == "int" else float

    def typed(value):
        return None if value is None else kind(value)

    widget = dict(min_value=typed(bounds.low), max_value=typed(bounds.high), value=kind(field.default),
                  step=typed(bounds.step), key=key, help=_help(name, help))
    widget.update(options)
    return container.number_input(_label(name), **widget)


def choice_field(container, name: str, key: str, *, format_func: Callable[[str], str] = str,
                 help: str | None = None):
    """A ``selectbox`` offering the allowed values of the field ``name``, its default preselected."""
    choices = config_field(name).metadata["choices"]
    return container.selectbox(_label(name), choices, index=choices.index(config_field(name).default), key=key,
                               format_func=format_func, help=_help(name, help))


def flag_field(container, name: str, key: str, *, help: str | None = None) -> bool:
    """A ``checkbox`` for the boolean field ``name``, its default ticked or not."""
    return container.checkbox(_label(name), config_field(name).default, key=key, help=_help(name, help))
