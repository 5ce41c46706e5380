"""Defaults that more than one layer needs: the configuration, the command line and the engine
take them from here, so that none of them imports another for a number."""

from __future__ import annotations

DEFAULT_TRIGGER_TIMEOUT = 30.0  # seconds an open() may take to trigger an automount
DELEGATE_MODES = ("auto", "always", "never")  # `run --delegate`; the first is the default
