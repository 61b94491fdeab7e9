"""User-facing errors.

A `PgolfError` is a problem with the user's input (a corrupt shard, an unknown
config key, an artifact over budget). The CLI prints its message on one line
and exits non-zero without a traceback. Internal invariants use `assert`.
"""


class PgolfError(Exception):
    """A user error: one line saying what and where."""


class DataError(PgolfError):
    """Bad shards, sidecars, manifests or input text."""


class ConfigError(PgolfError, ValueError):
    """Bad config values, unknown keys or presets."""


class ArtifactError(PgolfError):
    """A corrupt, truncated or over-budget artifact."""


class TrainingError(PgolfError):
    """Training stopped (e.g. a NaN loss); the message says where the checkpoint is."""
