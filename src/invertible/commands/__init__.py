"""CLI sub-commands, one module each (see :mod:`invertible.cli`)."""
