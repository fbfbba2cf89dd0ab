"""The base of every error a user can act on: jobs print its message in one line, no traceback."""


class PipelineError(Exception):
    pass


def shown(value, limit: int = 200) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: an error echoes what was wrong,
    never a whole oversized input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
