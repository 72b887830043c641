"""The plugin contract: three hooks, each handed a ``register`` callback (the simonw/llm pattern).

A plugin is a module (or object) with functions marked ``@asg.hookimpl``; a distribution exposes it
through an entry point in group ``asg``. The host owns collection, so it can reject duplicate names
and remember which plugin provided what. Implementations may accept fewer arguments than the spec.
"""

from __future__ import annotations

import pluggy

PROJECT = "asg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backbones(register):  # type: ignore[no-untyped-def]
    """Register backbones: ``register(name, factory, description="")``.

    ``factory`` is a backbone class or a lazy ``"module:attr"`` string (so that listing plugins never
    imports torch). The class implements :class:`asg.protocol.Backbone` plus the classmethods of
    :class:`asg.protocol.BackboneFactory`. Added in 0.1.
    """


@hookspec
def register_rewards(register):  # type: ignore[no-untyped-def]
    """Register reward components: ``register(name, reward, description="")``. Added in 0.1."""


@hookspec
def register_recipes(register):  # type: ignore[no-untyped-def]
    """Register recipes (named training configurations): ``register(name, recipe, description="")``.
    Added in 0.1."""
