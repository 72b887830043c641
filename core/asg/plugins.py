"""The plugin host: loads ``asg`` entry points one at a time, then the built-ins, and collects what
each registers into named registries (backbones, rewards, recipes).

Why not ``PluginManager.load_setuptools_entrypoints``: it stops at the first plugin that fails to
import (simonw/llm#1280), so one broken backbone would break every ``asg`` command. Here a failing
plugin is recorded (distribution, version, error) and skipped, unless ``ASG_STRICT_PLUGINS=1``.

Environment:
    ASG_LOAD_PLUGINS=a,b   load only these entry points (entry-point or distribution names); empty = none
    ASG_STRICT_PLUGINS=1   any plugin error (import, hook, duplicate name) is fatal

Nothing here imports torch: backbones are registered as lazy ``"module:attr"`` strings.

At run time :func:`guard_backbone` attributes what a backbone's primitives raise: anything but asg's own
errors becomes a ``BackboneError`` naming the backbone, its plugin and the primitive.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import inspect
import os
import re
import traceback
import weakref
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, NoReturn

import attrs
import pluggy

from asg import hookspecs
from asg._validate import did_you_mean
from asg.errors import AsgError, BackboneError, DuplicateNameError, NonFiniteError, PluginError, UnknownNameError

ENTRY_POINT_GROUP = "asg"
# Built-in plugins, registered after third-party ones exactly like them (llm's DEFAULT_PLUGINS).
DEFAULT_PLUGINS: tuple[str, ...] = ("asg.backbones.tiny.plugin", "asg.rewards.plugin", "asg.train.plugin")
KINDS = ("backbones", "rewards", "recipes")
_HOOKS = {kind: f"register_{kind}" for kind in KINDS}
_SINGULAR = {"backbones": "backbone", "rewards": "reward", "recipes": "recipe"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@attrs.frozen
class Registration:
    """One named thing a plugin registered."""

    kind: str  # one of KINDS
    name: str  # the public name, e.g. "tiny"
    target: Any  # a class/callable, or a lazy "module:attr" string
    provider: str  # plugin name that registered it
    description: str = ""

    def resolve(self) -> Any:
        """The registered object, importing it first if it was registered as ``"module:attr"``."""
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # noqa: BLE001 - re-raised with the culprit named
            raise PluginError(
                f"{_SINGULAR[self.kind]} {self.name!r} from plugin {self.provider!r} points at "
                f"{self.target!r}, which cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        return obj


@attrs.define
class PluginRecord:
    """What `asg plugins` reports about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = attrs.Factory(list)
    registered: dict[str, list[str]] = attrs.Factory(lambda: {k: [] for k in KINDS})
    error: str | None = None
    error_phase: str | None = None  # "import" | "validate" | "register_<kind>" | "not-found"
    traceback: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out.pop("traceback")
        return out


def _dist_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


class PluginHost:
    """Loads plugins and owns the registries. Use :func:`get_host` for the process-wide instance."""

    def __init__(
        self,
        *,
        entry_points: Iterable[md.EntryPoint] | None = None,
        builtins: Iterable[str] = DEFAULT_PLUGINS,
        env: dict[str, str] | None = None,
    ) -> None:
        self._entry_points = entry_points  # None = discover from installed distributions
        self._builtins = tuple(builtins)
        env = dict(os.environ) if env is None else env
        self.strict = env.get("ASG_STRICT_PLUGINS", "") not in ("", "0", "false", "False")
        only = env.get("ASG_LOAD_PLUGINS")
        self.only: set[str] | None = None if only is None else {s.strip() for s in only.split(",") if s.strip()}
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.registries: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        self._loaded = False

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> PluginHost:
        """Import and register every plugin, then collect registrations. Idempotent."""
        if self._loaded:
            return self
        self._loaded = True
        self._load_entry_points()
        for module in self._builtins:
            self._register_module(module, name=module, builtin=True, dist=("asg-core", _core_version()))
        for kind in KINDS:
            self._collect(kind)
        return self

    def _fail(self, record: PluginRecord, phase: str, exc: BaseException | str) -> None:
        if isinstance(exc, BaseException):
            record.error = f"{type(exc).__name__}: {exc}"
            record.traceback = "".join(traceback.format_exception(exc))
        else:
            record.error = exc
        record.error_phase = phase
        if self.strict:
            where = f" ({record.distribution} {record.version})" if record.distribution else ""
            raise PluginError(
                f"plugin {record.name!r}{where} failed during {phase}: {record.error} "
                "(ASG_STRICT_PLUGINS is set; unset it to skip broken plugins)"
            ) from (exc if isinstance(exc, BaseException) else None)

    def _discover(self) -> list[md.EntryPoint]:
        if self._entry_points is not None:
            return list(self._entry_points)
        return list(md.entry_points(group=ENTRY_POINT_GROUP))

    def _load_entry_points(self) -> None:
        seen: dict[str, tuple[str | None, str | None]] = {}
        matched: set[str] = set()
        for ep in sorted(self._discover(), key=lambda e: (e.name, e.value)):
            dist, version = _dist_of(ep)
            if self.only is not None:
                hits = {ep.name, dist} & self.only
                if not hits:
                    continue
                matched |= {h for h in hits if h}
            if ep.name in seen:
                if seen[ep.name] == (dist, version):
                    continue  # editable installs can list one entry point twice (setuptools#3649)
                record = PluginRecord(name=ep.name, module=ep.value, distribution=dist, version=version)
                self.records[f"{ep.name} ({dist})"] = record
                other = seen[ep.name]
                self._fail(record, "validate", f"plugin name {ep.name!r} is also used by distribution {other[0]} {other[1]}")
                continue
            seen[ep.name] = (dist, version)
            record = PluginRecord(name=ep.name, module=ep.value, distribution=dist, version=version)
            self.records[ep.name] = record
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is isolated
                self._fail(record, "import", exc)
                continue
            self._register_object(plugin, record)
        for name in sorted((self.only or set()) - matched):
            record = PluginRecord(name=name, module="")
            self.records[name] = record
            self._fail(record, "not-found", f"ASG_LOAD_PLUGINS names {name!r}, but no installed plugin has that name")

    def _register_module(self, module: str, *, name: str, builtin: bool, dist: tuple[str, str]) -> None:
        record = PluginRecord(name=name, module=module, distribution=dist[0], version=dist[1], builtin=builtin)
        self.records[name] = record
        try:
            plugin = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001
            self._fail(record, "import", exc)
            return
        self._register_object(plugin, record)

    def _register_object(self, plugin: object, record: PluginRecord) -> None:
        try:
            self.pm.register(plugin, name=record.name)
        except Exception as exc:  # noqa: BLE001 - e.g. PluginValidationError: bad hook arguments
            self._fail(record, "validate", exc)
            return
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = [c.name for c in callers if not c.has_spec()]
        if unknown:
            self.pm.unregister(plugin)
            known = ", ".join(sorted(_HOOKS.values()))
            self._fail(record, "validate", f"implements unknown hook(s) {', '.join(unknown)} (known hooks: {known})")
            return
        record.hooks = sorted(c.name for c in callers)

    def _collect(self, kind: str) -> None:
        hook = getattr(self.pm.hook, _HOOKS[kind])
        # get_hookimpls() is in registration order (pluggy *calls* them in reverse); the first
        # registrant of a name keeps it, later ones are reported as duplicates.
        for impl in hook.get_hookimpls():
            record = self.records[impl.plugin_name]
            staged: list[Registration] = []

            def register(name: str, target: Any, description: str = "", *, _staged=staged, _rec=record) -> None:
                if not isinstance(name, str) or not _NAME_RE.match(name):
                    raise PluginError(
                        f"{_SINGULAR[kind]} name must match {_NAME_RE.pattern}, got {name!r}"
                    )
                if target is None:
                    raise PluginError(f"{_SINGULAR[kind]} {name!r} was registered with target None")
                if isinstance(target, str) and ":" not in target:
                    raise PluginError(f"{_SINGULAR[kind]} {name!r}: a lazy target must look like 'module:attr', got {target!r}")
                _staged.append(Registration(kind, name, target, _rec.name, str(description)))

            kwargs = {arg: register for arg in impl.argnames if arg == "register"}
            try:
                impl.function(**kwargs)
            except Exception as exc:  # noqa: BLE001 - roll back this plugin's partial registration
                self._fail(record, _HOOKS[kind], exc)
                continue
            for reg in staged:
                self._commit(reg, record)

    def _commit(self, reg: Registration, record: PluginRecord) -> None:
        registry = self.registries[reg.kind]
        previous = registry.get(reg.name)
        if previous is not None:
            providers = self.conflicts.setdefault((reg.kind, reg.name), [self._describe(previous.provider)])
            providers.append(self._describe(reg.provider))
            msg = (
                f"duplicate {_SINGULAR[reg.kind]} name {reg.name!r}: registered by "
                f"{' and '.join(providers)}; uninstall one or limit loading with ASG_LOAD_PLUGINS"
            )
            if self.strict:
                raise DuplicateNameError(msg)
            record.error = msg
            record.error_phase = _HOOKS[reg.kind]
            return
        registry[reg.name] = reg
        record.registered[reg.kind].append(reg.name)

    def _describe(self, plugin_name: str) -> str:
        rec = self.records.get(plugin_name)
        if rec is None or rec.distribution is None:
            return f"plugin {plugin_name!r}"
        return f"plugin {plugin_name!r} ({rec.distribution} {rec.version})"

    def describe_provider(self, kind: str, name: str) -> str:
        """``"plugin 'p' (dist 1.0)"``: who registered ``name`` (the first registrant of a duplicate)."""
        self.load()
        reg = self.registries[kind].get(name)
        return self._describe(reg.provider) if reg is not None else "an unregistered plugin"

    # -- lookup ----------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Registration:
        """The registration of ``name``; errors list the valid names or both conflicting providers."""
        self.load()
        if (kind, name) in self.conflicts:
            raise DuplicateNameError(
                f"{_SINGULAR[kind]} name {name!r} is ambiguous: registered by "
                f"{' and '.join(self.conflicts[(kind, name)])}"
            )
        try:
            return self.registries[kind][name]
        except KeyError:
            valid = ", ".join(sorted(self.registries[kind])) or "none installed"
            failed = [f"{r.name} ({r.error_phase}: {r.error})" for r in self.records.values() if r.error]
            hint = f"; plugins that failed to load: {', '.join(failed)} (see `asg plugins`)" if failed else ""
            near = did_you_mean(name, self.registries[kind])
            raise UnknownNameError(f"unknown {_SINGULAR[kind]} {name!r}; valid choices: {valid}{near}{hint}") from None

    def names(self, kind: str) -> list[str]:
        self.load()
        return sorted(self.registries[kind])

    def to_json(self) -> list[dict[str, Any]]:
        self.load()
        return [r.to_json() for r in self.records.values()]


def _core_version() -> str:
    from asg import __version__

    return __version__


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST.load()


def reset_host(host: PluginHost | None = None) -> None:
    """Replace (or drop) the process-wide host; tests use this to start clean."""
    global _HOST
    _HOST = host


def get_backbone_class(name: str) -> Any:
    """The backbone class registered under ``name`` (imported on demand)."""
    return get_host().get("backbones", name).resolve()


def registered(kind: str) -> list[str]:
    return get_host().names(kind)


# -- attributing what a backbone raises ----------------------------------------------------------------
# The primitives of asg.protocol.Backbone. guard_backbone re-raises anything but asg's own errors that
# escapes one of them as a BackboneError naming the backbone, its plugin and the primitive.
PRIMITIVES: tuple[str, ...] = (
    "use_role", "trainable_parameters", "generate_text", "score", "generate_images", "generator_loss",
    "image_token_logprobs", "embed_text", "embed_image", "trainable_state_dict", "load_trainable_state_dict",
    "save_trainable", "load_trainable", "components", "root_module",
)
# running out of memory is the machine's limit, not a plugin's bug, and asg.oom retries it with smaller
# batches: the same test as asg.oom.is_oom (torch's OutOfMemoryError, or a RuntimeError saying so), by name
_NOT_A_PLUGIN_BUG = ("MemoryError", "OutOfMemoryError")


def _out_of_memory(exc: Exception) -> bool:
    return (any(c.__name__ in _NOT_A_PLUGIN_BUG for c in type(exc).__mro__)
            or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()))


# torch.multinomial's refusal of NaN/inf probabilities: a numerical fault of the model's output, which the
# trainer skips like asg's own NonFiniteError, not a bug of the plugin's code
_NONFINITE_SAMPLING = "probability tensor contains either"


def _reraise(exc: Exception, backbone: str, plugin: str, primitive: str) -> NoReturn:
    if isinstance(exc, AsgError) or _out_of_memory(exc):
        raise exc
    if isinstance(exc, RuntimeError) and _NONFINITE_SAMPLING in str(exc):
        raise NonFiniteError(f"backbone {backbone!r} from {plugin}: {primitive} sampled from non-finite "
                             f"probabilities ({exc})") from exc
    err = BackboneError(f"backbone {backbone!r} from {plugin} raised in {primitive}: {type(exc).__name__}: {exc}")
    err.backbone, err.plugin, err.primitive = backbone, plugin, primitive
    raise err from exc


@contextlib.contextmanager
def attributed(backbone: str, primitive: str) -> Iterator[None]:
    """Run a call of backbone ``backbone``'s plugin code (e.g. its ``load``) under :func:`guard_backbone`'s rule."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised, attributed
        _reraise(exc, backbone, get_host().describe_provider("backbones", backbone), primitive)


class _GuardedContext:
    """``use_role``'s context manager: failures entering or leaving are attributed, the body's are not."""

    def __init__(self, cm: Any, where: tuple[str, str, str]) -> None:
        self._cm, self._where = cm, where

    def __enter__(self) -> Any:
        try:
            return self._cm.__enter__()
        except Exception as exc:  # noqa: BLE001
            _reraise(exc, *self._where)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> Any:
        try:
            return self._cm.__exit__(et, ev, tb)
        except Exception as exc:  # noqa: BLE001
            if exc is ev:
                raise
            _reraise(exc, *self._where)


def _guard(target: Any, owner: Any, where: tuple[str, str, str]) -> Any:
    get: Any = lambda: target
    if inspect.ismethod(target) and target.__self__ is owner:
        try:  # a weak reference, so that the wrapper stored on the instance keeps no cycle alive
            get = weakref.WeakMethod(target)
        except TypeError:  # the class takes no weak references
            pass

    def call(*args: Any, **kwargs: Any) -> Any:
        method = get()
        if method is None:  # the weak reference died: nothing else held the backbone
            raise BackboneError(f"backbone {where[0]!r}: {where[2]}() was called on a backbone that no longer "
                                "exists; keep a reference to the loaded backbone (b = load_backbone(...); "
                                f"b.{where[2]}(...)) instead of calling a method on the loader's result directly")
        try:
            result = method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            _reraise(exc, *where)
        if where[2] == "use_role" and hasattr(result, "__exit__"):
            return _GuardedContext(result, where)
        return result

    call.__name__ = call.__qualname__ = where[2]
    call.__doc__ = getattr(target, "__doc__", None)
    return call


class _GuardedProxy:
    """For a backbone that takes no instance attributes (``__slots__``): everything else is forwarded."""

    def __init__(self, inner: Any, wrapped: dict[str, Any]) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_wrapped", wrapped)

    def __getattr__(self, name: str) -> Any:
        return self._wrapped[name] if name in self._wrapped else getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)


def guard_backbone(backbone: Any, name: str | None = None) -> Any:
    """``backbone`` with its protocol primitives attributed: an exception other than asg's own (and out
    of memory) escaping one becomes a :class:`BackboneError` "backbone 'x' from plugin 'p' (dist 1.0)
    raised in generate_text: ValueError: ...", the original chained. The wrappers are set on the instance,
    so ``isinstance`` and every other attribute are untouched; guarding twice changes nothing."""
    if getattr(backbone, "__dict__", {}).get("_asg_guarded"):
        return backbone
    name = name or str(getattr(backbone, "name", type(backbone).__name__))
    where = (name, get_host().describe_provider("backbones", name))
    wrapped = {p: _guard(t, backbone, (*where, p)) for p in PRIMITIVES if callable(t := getattr(backbone, p, None))}
    try:
        for primitive, call in wrapped.items():
            object.__setattr__(backbone, primitive, call)
        object.__setattr__(backbone, "_asg_guarded", True)
    except (AttributeError, TypeError):
        return _GuardedProxy(backbone, wrapped)
    return backbone


__all__: list[str] = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PRIMITIVES",
    "PluginHost",
    "PluginRecord",
    "Registration",
    "attributed",
    "get_backbone_class",
    "get_host",
    "guard_backbone",
    "registered",
    "reset_host",
]
