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
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata

from ..config import settings
from ..errors import FastLoRAError, PluginError
from . import protocol

GROUP = "fastlora.peft"
_BUILTINS = {"lora": "fastlora.peft.builtins:LoRA", "lora_sym": "fastlora.peft.builtins:SymmetricLoRA",
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


class Registry:
    def __init__(self):
        self._entries: dict[str, Entry] | None = None
        self._defaults: dict[str, object] = {}
        self._lock = threading.RLock()

    # -- discovery --------------------------------------------------------------------
    def _discover(self) -> dict[str, Entry]:
        with self._lock:
            if self._entries is None:
                self._entries = {}
                self._read_entry_points()
            return self._entries

    def _read_entry_points(self) -> None:
        # built-ins come from fastlora itself (also from a source tree without metadata)
        for name, value in _BUILTINS.items():
            self._entries[name] = Entry(name, value, "fastlora", _own_version())
        seen = set()
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "?"
            if dist == "fastlora":
                if ep.name not in _BUILTINS:
                    self._add(Entry(ep.name, ep.value, dist, version))
                continue
            if not settings.plugin_autoload:
                continue
            if (ep.name, ep.value, dist) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value, dist))
            if ep.name in _BUILTINS:
                claim = f"{dist} {version} ({ep.value})"
                self._entries[ep.name].ignored_claims.append(claim)
                warnings.warn(f"distribution {claim} registers the built-in peft name {ep.name!r}; built-in names "
                              f"always resolve to fastlora's own classes, so that entry point is ignored "
                              f"(rename it in the plugin)", RuntimeWarning, stacklevel=4)
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
            protocol.validate(instance, origin=f"distribution {entry.distribution}")
            if instance.name != entry.name:
                raise PluginError(f"its class says name={instance.name!r} but the entry point is {entry.name!r}")
            entry.loaded = obj
            self._defaults[entry.name] = instance
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never break the host
            entry.error = f"{type(exc).__name__}: {exc}"

    def _entry_error(self, entry: Entry) -> PluginError:
        if entry.claimants:
            return PluginError(f"peft {entry.name!r} is claimed by two distributions: "
                               f"{entry.distribution} {entry.version} ({entry.value}) and "
                               f"{', '.join(entry.claimants)}; uninstall one, or register the one you want with "
                               f"fastlora.peft.register(..., overwrite=True)")
        return PluginError(f"peft plugin {entry.name!r} from distribution {entry.distribution} {entry.version} "
                           f"failed to load: {entry.error}")

    # -- public -----------------------------------------------------------------------
    def available(self) -> list[str]:
        """Names of every parameterization that loads and conforms (broken ones warn once)."""
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
            caps = protocol.capabilities(self._defaults[entry.name]) if entry.ok else None
            error = None if entry.ok else str(self._entry_error(entry))
            rows.append({"name": entry.name, "distribution": entry.distribution, "version": entry.version,
                         "source": entry.value, "capabilities": caps, "error": error,
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
                known = ", ".join(repr(n) for n in sorted(entries))
                raise FastLoRAError(f"peft={peft!r} is not a registered parameterization; available: {known}")
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
        elif options:
            raise FastLoRAError("peft options can only be given with a peft name or class, not an instance")
        protocol.validate(peft)
        return peft

    def register(self, peft, name: str | None = None, *, overwrite: bool = False):
        """Register a parameterization class or instance without packaging (e.g. in a notebook)."""
        instance = peft() if isinstance(peft, type) else peft
        protocol.validate(instance, origin="fastlora.peft.register")
        name = name or instance.name
        if name != instance.name:
            raise PluginError(f"register(name={name!r}) differs from the parameterization's name {instance.name!r}")
        _refuse_builtin(name, "register")
        entries = self._discover()
        if name in entries and not overwrite:
            e = entries[name]
            raise PluginError(f"peft {name!r} is already registered by {e.distribution}; "
                              f"pass overwrite=True to replace it")
        entries[name] = Entry(name, "<registered>", "<registered>", "", loaded=peft)
        self._defaults[name] = instance
        return peft

    def unregister(self, name: str) -> None:
        _refuse_builtin(name, "unregister")
        entries = self._discover()
        if name not in entries:
            raise FastLoRAError(f"peft {name!r} is not registered")
        del entries[name]
        self._defaults.pop(name, None)

    def reload(self) -> None:
        """Forget everything and read the entry points again (after installing a plugin)."""
        with self._lock:
            self._entries = None
            self._defaults.clear()


def _refuse_builtin(name: str, action: str) -> None:
    if name in _BUILTINS:
        raise PluginError(f"cannot {action} {name!r}: built-in names ({', '.join(map(repr, _BUILTINS))}) always "
                          f"resolve to fastlora's own classes; give your parameterization another name")


def _own_version() -> str:
    try:
        return metadata.version("fastlora")
    except metadata.PackageNotFoundError:
        return "source"


registry = Registry()
