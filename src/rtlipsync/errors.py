"""The one error type users see.

Every failure caused by what a user gave us (a file, a name, an option) is raised as
`InputError` with a sentence that says what was wrong and what to do. The CLI prints that
sentence alone; anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input from the user: the message is meant to be shown as it is."""
