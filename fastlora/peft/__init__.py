"""PEFT parameterizations: the open registry (entry-point group ``fastlora.peft``).

>>> import fastlora as fl
>>> fl.peft.available()            # doctest: +SKIP
['full', 'lora', 'lora_sym']
>>> lora = fl.peft.get("lora")     # the parameterization object
"""
from .protocol import API_VERSION, capabilities, protocol_errors, validate
from .registry import GROUP, registry

available = registry.available
get = registry.get
register = registry.register
unregister = registry.unregister
info = registry.info
reload = registry.reload

__all__ = ["API_VERSION", "GROUP", "available", "capabilities", "get", "info", "protocol_errors", "register",
           "reload", "unregister", "validate"]
