"""Benchmarks for fdchannel, run with ``python -m bench [FIGURE ...]``.

Each figure is one module with ``NAME``, ``HELP``, ``add_arguments`` and
``run``; ``_report`` prints the tables and ratios they share, ``_loops``
runs a coroutine on a named event loop and ``_peer`` runs the other side of
a measurement in a child process.
"""
