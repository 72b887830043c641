"""Errors raised by asg. Each names the culprit and, where there is one, the way out."""

from __future__ import annotations


class AsgError(Exception):
    """Base class of every error asg raises on purpose."""


class ConfigError(AsgError, ValueError):
    """A configuration value, argument or combination is invalid."""


class ConfigFieldError(ConfigError):
    """A recipe field is unknown, of the wrong type, out of range or inconsistent with another field.

    The message starts with ``path``, the field's dotted path (``solver.sample.n``)."""

    path: str = ""


class PluginError(AsgError):
    """A plugin failed to import, to register, or registered something invalid."""


class BackboneError(PluginError):
    """A backbone primitive raised something other than an asg error (chained as ``__cause__``);
    ``backbone``, ``plugin`` and ``primitive`` say whose code failed where (``asg.plugins.guard_backbone``)."""

    backbone: str = ""
    plugin: str = ""
    primitive: str = ""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name in the same registry."""


class UnknownNameError(AsgError, KeyError):
    """A backbone, reward, recipe or preset name that nobody registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class CapabilityError(AsgError):
    """A backbone was asked for something its declared capabilities exclude."""


class NonFiniteError(AsgError, FloatingPointError):
    """A model output that a step samples from (logits, latents) holds NaN or +inf.

    The trainer abandons the step: every role not yet updated in it skips with ``nonfinite_output``, and
    the step counts towards ``run.max_consecutive_skips`` (:func:`asg.updates.guards.check_finite`)."""


class DataError(AsgError, ValueError):
    """Input data (images, folders, files) is unusable."""
