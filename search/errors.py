"""Two kinds of failure, kept apart on purpose (as keras-tuner's errors.py does).

UserError: bad input that must stop everything before (or instead of) any trial: a bad space file, a
missing dataset, impossible weights. The CLI prints its one-line message and exits with status 2.

TrialError: something went wrong inside one trial (diverged, out of memory): the trial is recorded as
failed with its reason and the study goes on.
"""


class UserError(Exception):
    """A problem with what the user gave us; the message is one line that names the culprit."""


class TrialError(Exception):
    """One trial failed for a reason that must not stop the study."""
