"""Audience Manager services, stores and the pure domain they share with the rule job."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("audience-manager")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
