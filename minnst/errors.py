"""The library's errors shared across modules: a setting it cannot use (every
configuration), a cluster that cannot be used and a task whose
cluster workers kept dying (``distributed``)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A setting a run cannot use. ``field`` is the configuration field; the message
    starts with the field in words ("style scale must be …"), so that a command line can
    put its flag in their place (``cli_message``)."""

    def __init__(self, field_name: str, message: str):
        words = field_name.replace("_", " ")
        if not message.startswith(words):
            message = f"{words}: {message}"
        super().__init__(message)
        self.field = field_name

    def __reduce__(self):  # pickles (an error raised on a Dask worker comes back whole)
        return (type(self), (self.field, str(self)))

    def cli_message(self) -> str:
        """The message with the field's words replaced by its ``--flag``."""
        words = self.field.replace("_", " ")
        return "--" + self.field.replace("_", "-") + str(self)[len(words):]


class ClusterError(ValueError):
    """A Dask cluster that cannot be used: Dask missing, a scheduler that does not answer,
    workers without (this version of) minnst (``distributed.cluster``)."""


class WorkerDied(RuntimeError):
    """A task whose workers kept dying while running it (Dask's ``KilledWorker``: more than
    ``distributed.scheduler.allowed-failures`` times; out of memory, most often)."""
