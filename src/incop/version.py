"""The version of incop (one place: the package face and the provenance of results read it)."""

__version__ = "0.1.0"
