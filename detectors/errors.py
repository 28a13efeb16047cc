"""The project's own input errors, told apart from bugs.

A command line turns an ``InputError`` into a one-line message and exit code 2; any other exception
keeps its traceback, so a real bug is never dressed up as the user's mistake. It subclasses
``ValueError`` so library callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (an option, a file, an image batch): the message says what to do."""
