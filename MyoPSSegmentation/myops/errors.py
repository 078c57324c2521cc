"""Exceptions with messages written for the person at the keyboard."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class MyoPSError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(MyoPSError):
    """An input (file, image or argument) the engine refuses, with the offending source named.

    Args:
        source: the file path or sequence name at fault (``None`` when the problem is not tied to one).
        problem: what is wrong, as one short sentence without a trailing period.
    """

    def __init__(self, source: Optional[Union[str, Path]], problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class ModelError(MyoPSError):
    """A model folder that is missing, malformed or fails its checksum."""


class CancelledError(MyoPSError):
    """The caller asked to stop (for example the Cancel button in Slicer)."""


#: ``extra=`` for a ``logging`` call whose message the command line shows the user in its own words: a case's
#: warnings (:func:`myops.pipeline.case_warnings`, printed as ``WARNING: ...`` lines, named by case in a batch)
#: and an untrained model. The engine logs them as it finds them, for every host; ``myops`` drops records that carry
#: the attribute :data:`REPORTED_WARNING` from its own log, so that each warning reaches the terminal once.
REPORTED_WARNING = "myops_reported_warning"
REPORTED = {REPORTED_WARNING: True}
