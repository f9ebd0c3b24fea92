"""Exceptions that say what was expected and what was found."""


class AutojudgeError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AutojudgeError, ValueError):
    """A model spec, decode setting or CLI argument is invalid."""


class ModelLoadError(AutojudgeError):
    """A model or tokenizer could not be loaded, or a draft/target pair does not fit together."""


class JudgeArtifactError(AutojudgeError):
    """A judge file is missing, corrupt, or was trained for another model pair."""


class DataError(AutojudgeError):
    """A data file is missing or corrupt."""


class SandboxError(AutojudgeError):
    """The sandbox itself failed (not the program it ran)."""
