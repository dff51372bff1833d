"""The ``altlens`` command line: one thin layer over the library's config dataclasses. Nothing imports it."""
