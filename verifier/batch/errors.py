"""The batch runner's two errors; both are the user's input or installation, printed as one line."""


class BatchError(ValueError):
    """Bad instances file, dataset, results file or option; the message is one line for the user."""


class WorkerError(RuntimeError):
    """A worker could not start (runner not importable, broken installation); one-line message."""
