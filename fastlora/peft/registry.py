"""The open registry of parameterizations over the entry-point group ``fastlora.peft``.

Entry points are read on first use and cached (nothing happens at ``import fastlora``);
a plugin is imported only when it is asked for, or when every plugin is listed.  A
plugin that fails to import or violates the protocol is recorded with its error and the
distribution it came from, and a :class:`~fastlora.errors.PluginError` is raised only
when *that* name is requested — the built-ins and other plugins keep working.  Two
distributions claiming one name make that name an error naming both.  The built-in names
(``lora``, ``lora_sym``, ``full``) always resolve to fastlora's own classes: a third-party
entry point claiming one is ignored, and reported by distribution (a RuntimeWarning once
per discovery, and ``info()``'s ``ignored_claims``); ``register`` cannot replace them.  Set
``FASTLORA_DISABLE_PLUGIN_AUTOLOAD=1`` to ignore every entry point but fastlora's own.

The same :class:`Registry`, given another :class:`Kind`, holds the problem generators of the
group ``fastlora.problems`` (:mod:`fastlora.generators`).
"""
from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field
from importlib import metadata

from ..config import settings
from ..errors import FastLoRAError, PluginError
from . import protocol

GROUP = "fastlora.peft"
BUILTINS = {"lora": "fastlora.peft.builtins:LoRA", "lora_sym": "fastlora.peft.builtins:SymmetricLoRA",
            "full": "fastlora.peft.builtins:Full"}


@dataclass
class Entry:
    name: str
    value: str                    # "module:attr", or "<registered>"
    distribution: str
    version: str
    loaded: object = None         # the class (or factory) once imported
    error: str | None = None
    claimants: list = field(default_factory=list)  # other distributions claiming this name
    ignored_claims: list = field(default_factory=list)  # third-party claims on a built-in name

    @property
    def ok(self) -> bool:
        return self.error is None and not self.claimants


@dataclass(frozen=True)
class Kind:
    """What one registry holds: its entry-point ``group``, the ``builtins`` (name -> "module:attr")
    that always resolve to fastlora's own objects, the ``noun`` and the ``argument`` its errors use,
    ``validate(obj, origin)`` (raises :class:`PluginError`), ``named``: whether the object
    carries its registry name in ``obj.name``, the public ``module`` that wraps the registry, and
    ``describe(obj)``: what ``info()`` shows of a loaded entry."""

    group: str
    builtins: dict
    noun: str
    argument: str
    validate: object
    named: bool = True
    module: str = "fastlora.peft"
    describe: object = protocol.capabilities   # obj -> the dict info() shows as "capabilities"


PEFT = Kind(GROUP, BUILTINS, "parameterization", "peft", protocol.validate)


class Registry:
    def __init__(self, kind: Kind = PEFT):
        self.kind = kind
        self._entries: dict[str, Entry] | None = None
        self._defaults: dict[str, object] = {}
        self._lock = threading.RLock()
        self._options = weakref.WeakKeyDictionary()  # instance -> the options get() built it with

    # -- discovery --------------------------------------------------------------------
    def _discover(self) -> dict[str, Entry]:
        with self._lock:
            if self._entries is None:
                self._entries = {}
                self._read_entry_points()
            return self._entries

    def _read_entry_points(self) -> None:
        # built-ins come from fastlora itself (also from a source tree without metadata)
        builtins = self.kind.builtins
        for name, value in builtins.items():
            self._entries[name] = Entry(name, value, "fastlora", _own_version())
        seen = set()
        for ep in metadata.entry_points(group=self.kind.group):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "?"
            if dist == "fastlora":
                if ep.name not in builtins:
                    self._add(Entry(ep.name, ep.value, dist, version))
                continue
            if not settings.plugin_autoload:
                continue
            if (ep.name, ep.value, dist) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value, dist))
            if ep.name in builtins:
                claim = f"{dist} {version} ({ep.value})"
                self._entries[ep.name].ignored_claims.append(claim)
                warnings.warn(f"distribution {claim} registers the built-in {self.kind.argument} name {ep.name!r}; "
                              f"built-in names always resolve to fastlora's own classes, so that entry point is "
                              f"ignored (rename it in the plugin)", RuntimeWarning, stacklevel=4)
                continue
            self._add(Entry(ep.name, ep.value, dist, version))

    def _add(self, entry: Entry) -> None:
        current = self._entries.get(entry.name)
        if current is None:
            self._entries[entry.name] = entry
        elif current.distribution != entry.distribution:
            current.claimants.append(f"{entry.distribution} {entry.version} ({entry.value})")

    # -- loading ----------------------------------------------------------------------
    def _load(self, entry: Entry) -> None:
        if entry.loaded is not None or entry.error is not None:
            return
        try:
            module_name, _, attr = entry.value.partition(":")
            obj = __import__(module_name, fromlist=["_"])
            for part in attr.split("."):
                obj = getattr(obj, part)
            instance = obj() if isinstance(obj, type) else obj
            self.kind.validate(instance, origin=f"distribution {entry.distribution}")
            if self.kind.named and instance.name != entry.name:
                raise PluginError(f"its class says name={instance.name!r} but the entry point is {entry.name!r}")
            entry.loaded = obj
            self._defaults[entry.name] = instance
            self._remember(instance, {})
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never break the host
            entry.error = f"{type(exc).__name__}: {exc}"

    def _entry_error(self, entry: Entry) -> PluginError:
        if entry.claimants:
            return PluginError(f"{self.kind.argument} {entry.name!r} is claimed by two distributions: "
                               f"{entry.distribution} {entry.version} ({entry.value}) and "
                               f"{', '.join(entry.claimants)}; uninstall one, or register the one you want with "
                               f"{self.kind.module}.register(..., overwrite=True)")
        return PluginError(f"{self.kind.argument} plugin {entry.name!r} from distribution {entry.distribution} "
                           f"{entry.version} failed to load: {entry.error}")

    # -- public -----------------------------------------------------------------------
    def available(self) -> list[str]:
        """Names of every entry that loads and conforms (broken ones warn once)."""
        entries = self._discover()
        names = []
        for entry in list(entries.values()):
            self._load(entry)
            if entry.ok:
                names.append(entry.name)
            elif not getattr(entry, "_warned", False):
                entry._warned = True
                warnings.warn(str(self._entry_error(entry)), RuntimeWarning, stacklevel=3)
        return sorted(names)

    def info(self) -> list[dict]:
        """One record per entry: name, distribution, version, source, capabilities, error, and
        ``ignored_claims`` (third-party distributions that also claim a built-in name)."""
        rows = []
        for entry in sorted(self._discover().values(), key=lambda e: e.name):
            self._load(entry)
            caps = self.kind.describe(self._defaults[entry.name]) if entry.ok else None
            error = None if entry.ok else str(self._entry_error(entry))
            rows.append({"name": entry.name, "group": self.kind.group, "distribution": entry.distribution,
                         "version": entry.version, "source": entry.value, "capabilities": caps, "error": error,
                         "ignored_claims": list(entry.ignored_claims)})
        return rows

    def get(self, peft, **options):
        """The parameterization for a registered name, a class, or an instance.

        ``options`` are passed to the class (e.g. ``get("lora", alpha=16)``); without options
        a cached default instance is returned.
        """
        if isinstance(peft, str):
            entries = self._discover()
            entry = entries.get(peft)
            if entry is None:
                known = ", ".join(repr(n) for n in sorted(entries)) or "none installed"
                raise FastLoRAError(f"{self.kind.argument}={peft!r} is not a registered {self.kind.noun}; "
                                    f"available: {known}")
            self._load(entry)
            if not entry.ok:
                raise self._entry_error(entry)
            if not options:
                return self._defaults[peft]
            peft = entry.loaded
        if isinstance(peft, type):
            try:
                peft = peft(**options)
            except TypeError as exc:
                raise FastLoRAError(f"peft options {sorted(options)} are not accepted by {peft.__name__}: "
                                    f"{exc}") from None
            except ValueError as exc:  # a plugin's own refusal of a value: reported as bad input
                if isinstance(exc, FastLoRAError):
                    raise
                raise FastLoRAError(f"peft_options for {peft.__name__}: {exc}") from None
            self._remember(peft, options)
        elif options:
            raise FastLoRAError("peft options can only be given with a peft name or class, not an instance")
        if not callable(getattr(peft, "delta", None)):  # not meant as one (a number, a list, ...): name the argument
            known = ", ".join(repr(n) for n in sorted(self._discover())) or "none installed"
            raise FastLoRAError(f"{self.kind.argument} must be the name of a registered {self.kind.noun} ({known}) "
                                f"or a {self.kind.noun} class or instance; got {type(peft).__name__} {peft!r:.60}")
        self.kind.validate(peft)
        return peft

    def options_of(self, instance) -> dict | None:
        """The options :meth:`get` built ``instance`` with ({} for a default instance), or None for an
        instance made elsewhere (its options are unknown)."""
        try:
            known = self._options.get(instance)
        except TypeError:  # not weak-referenceable
            return None
        return None if known is None else dict(known)

    def _remember(self, instance, options: dict) -> None:
        try:
            self._options[instance] = dict(options)
        except TypeError:  # not weak-referenceable: its options stay unknown
            pass

    def register(self, peft, name: str | None = None, *, overwrite: bool = False):
        """Register a parameterization class or instance without packaging (e.g. in a notebook)."""
        instance = peft() if isinstance(peft, type) else peft
        self.kind.validate(instance, origin="register")
        if self.kind.named:
            name = name or instance.name
            if name != instance.name:
                raise PluginError(f"register(name={name!r}) differs from the {self.kind.noun}'s name "
                                  f"{instance.name!r}")
        elif not isinstance(name, str) or not name:
            raise PluginError(f"register() needs the {self.kind.noun}'s name: register(obj, name='...')")
        self._refuse_builtin(name, "register")
        entries = self._discover()
        if name in entries and not overwrite:
            e = entries[name]
            raise PluginError(f"{self.kind.argument} {name!r} is already registered by {e.distribution}; "
                              f"pass overwrite=True to replace it")
        entries[name] = Entry(name, "<registered>", "<registered>", "", loaded=peft)
        self._defaults[name] = instance
        self._remember(instance, {})
        return peft

    def unregister(self, name: str) -> None:
        self._refuse_builtin(name, "unregister")
        entries = self._discover()
        if name not in entries:
            raise FastLoRAError(f"{self.kind.argument} {name!r} is not registered")
        del entries[name]
        self._defaults.pop(name, None)

    def reload(self) -> None:
        """Forget everything and read the entry points again (after installing a plugin)."""
        with self._lock:
            self._entries = None
            self._defaults.clear()

    def _refuse_builtin(self, name: str, action: str) -> None:
        builtins = self.kind.builtins
        if name in builtins:
            raise PluginError(f"cannot {action} {name!r}: built-in names ({', '.join(map(repr, builtins))}) always "
                              f"resolve to fastlora's own classes; give your {self.kind.noun} another name")


def _own_version() -> str:
    try:
        return metadata.version("fastlora")
    except metadata.PackageNotFoundError:
        return "source"


registry = Registry()


def finetuning_parameterization(peft, options: dict | None, retrained, argument: str = "peft", sizes=None):
    """The parameterization fine-tuning uses (docs/plugins.md, "Options and instances").

    ``peft`` (a name, class or instance) and its ``options`` resolve as :meth:`Registry.get` does,
    except that the name of ``retrained`` — the retrain result's parameterization — gives that very
    instance, with the options it was retrained with.  ``options`` that differ from those are refused
    (naming both) where fine-tuning keeps the retrained shared parameters, and honoured otherwise;
    so is an instance whose parameters (``shapes`` at ``sizes`` = (d_out, d_in, rank)) differ from
    the retrained one's.  ``argument``: the caller's name of ``peft`` in messages ("ft_peft")."""
    if retrained is None or isinstance(retrained, str):
        return registry.get(peft, **(options or {}))
    name = getattr(retrained, "name", None)
    if isinstance(peft, str) and peft == name:
        if options is None:
            return retrained
        known = registry.options_of(retrained)
        if known is not None and known == dict(options):
            return retrained
        built = registry.get(peft, **options)
        if protocol.shared_names(built):
            was = repr(known) if known is not None else "unknown: an instance built outside the registry"
            raise FastLoRAError(f"{argument}_options={dict(options)!r} differ from the options {argument}={peft!r} "
                                f"was retrained with ({was}); fine-tuning keeps the retrained shared parameters "
                                f"{list(protocol.shared_names(built))}, which need those options: leave "
                                f"{argument}_options out to fine-tune with the retrained instance")
        return built
    built = registry.get(peft, **(options or {}))
    if built is not retrained and getattr(built, "name", None) == name and protocol.shared_names(built) \
            and sizes is not None:
        mine, theirs = _parameter_shapes(built, sizes), _parameter_shapes(retrained, sizes)
        if mine != theirs:
            raise FastLoRAError(f"{argument}={name!r} as given has the parameters {sorted(mine)} "
                                f"{_options_text(built)}but the result was retrained with {name!r} of parameters "
                                f"{sorted(theirs)} {_options_text(retrained)}; fine-tuning keeps the retrained shared "
                                f"parameters: pass {argument}={name!r} (the retrained instance) instead")
    return built


def _parameter_shapes(peft, sizes) -> dict:
    try:
        return {k: tuple(v) for k, v in peft.shapes(*sizes).items()}
    except Exception:  # noqa: BLE001 - a shapes() that refuses these sizes: compared as unknown
        return {}


def _options_text(peft) -> str:
    known = registry.options_of(peft)
    return "(options unknown) " if known is None else f"(options {known!r}) "
