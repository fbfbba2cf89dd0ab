"""The base of every error a user can act on: jobs print its message in one line, no traceback."""


class PipelineError(Exception):
    pass
