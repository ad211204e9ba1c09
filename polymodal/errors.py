"""One exception type for every user mistake; the CLI prints its message as one line."""


class PolymodalError(Exception):
    """A problem the user can fix: the message names what is wrong and what to do."""
