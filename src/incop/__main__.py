"""``python -m incop``: the command line, as torchrun starts it on every rank."""

from incop.tools.cli import entry

entry()
