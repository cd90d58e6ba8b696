"""Errors of the data layer. Every message names the file and, where one applies, the field."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset directory, file or field is missing, corrupt or does not match the schema."""
