"""Subcommands of the ``crisp`` CLI: one module each, discovered by :mod:`crisp.cli`.

A command module defines ``register(subparsers)`` that adds its parser and sets
``func=run`` as the parser default; ``run(args)`` returns the exit code.
"""
