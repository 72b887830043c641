"""Built-in plugin: registers the recipes e1 … e7 (algorithm.md §8) like a third-party plugin would.

A registered recipe is a mapping over the E1 defaults, a :class:`asg.train.recipe.Recipe`, or a
callable returning either (a lazy ``"module:attr"`` target works too).
"""

from asg import hookimpl
from asg.train.presets import PRESETS


@hookimpl
def register_recipes(register):  # type: ignore[no-untyped-def]
    for name, preset in PRESETS.items():
        register(name, preset, description=preset["description"])
