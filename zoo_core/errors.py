"""Exceptions that the zoo reports to users as one line (no traceback unless --verbose)."""


class ZooError(Exception):
    """A user-facing error: bad input, a missing file, a broken plugin. The CLI prints its message alone.

    The message is always one line: control characters that user-supplied names or values bring
    in (a newline in a ``--set`` value, a carriage return in an entry name) are shown escaped."""

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """``text`` with every non-printable character (newlines included) written as its escape, e.g. ``\\n``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class ConfigError(ZooError):
    """A registry entry or a --set override is invalid. The message names file, entry, key and what was expected."""


class DataError(ZooError):
    """Data is missing, unreadable, corrupted, or of the wrong shape/range for the model."""


class CheckpointError(ZooError):
    """A checkpoint or run directory cannot be read."""


class PluginError(ZooError):
    """A plugin failed to import, its hook raised, or it broke the registration rules."""


class RunDirWriteError(ZooError):
    """A run-directory file (config.yaml, a checkpoint, metrics.json, ...) could not be written,
    e.g. a full disk. The message names the file and the cause; files written before are kept."""


class TrainingDiverged(ZooError):
    """The loss became NaN or infinite; training stopped before applying the bad step."""


class NoLikelihoodError(ZooError, NotImplementedError):
    """Raised by ``log_prob`` of a family that defines no likelihood (GANs, plain autoencoders).

    The message names the family and the metrics to use instead.
    """

    def __init__(self, family: str, alternatives: str):
        self.family = family
        self.alternatives = alternatives
        super().__init__(
            f"family '{family}' defines no likelihood, so log_prob is not available; "
            f"compare it with {alternatives} instead"
        )


class InterfaceError(PluginError):
    """A family broke the interface contract (e.g. ``log_prob`` returned the wrong shape). ``family``
    names it, so that a caller holding the plugin catalogue can add which plugin provided it."""

    def __init__(self, family: str, message: str):
        self.family = family
        super().__init__(message)


class ContextError(ZooError, ValueError):
    """A context (class labels) was given to an unconditional model, or has the wrong shape or values."""


class MetricError(ZooError):
    """A metric cannot report a meaningful value (e.g. a NaN log-likelihood, or a negative NLL of
    discrete data); the message names the family and what was measured."""
