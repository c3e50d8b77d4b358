"""How the patches a MODEL handle carries reach the UNet while sampling.

A node that changes a model (IP-Adapter, and later LoRA, model merges, motion modules) returns a new handle
carrying a patch object; the loaded UNet itself is never changed outside sampling. Each patch kind registers
one installer: a context manager ``install(unet, patches, state)`` that receives every patch of its kind on
the handle, in application order, changes the UNet on entry and restores it on exit. KSampler enters the
installers of every kind present, in the order each kind first appears on the handle.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

Installer = Callable[[Any, list, Any], AbstractContextManager]
_INSTALLERS: dict[type, Installer] = {}


def patch_installer(patch_type: type) -> Callable[[Installer], Installer]:
    """Register the installer of ``patch_type`` (decorator)."""

    def register(fn: Installer) -> Installer:
        _INSTALLERS[patch_type] = fn
        return fn

    return register


def install_patches(stack: ExitStack, unet: Any, patches: tuple, state: Any) -> None:
    """Enter the installer of every patch kind in ``patches`` on ``stack`` (undone when the stack closes)."""
    kinds: dict[type, list] = {}
    for patch in patches:
        kinds.setdefault(type(patch), []).append(patch)
    unknown = [kind.__name__ for kind in kinds if kind not in _INSTALLERS]
    if unknown:
        raise TypeError(f"KSampler does not know how to install patches of type {', '.join(unknown)}")
    for kind, group in kinds.items():
        stack.enter_context(_INSTALLERS[kind](unet, group, state))
