"""User-facing errors: the CLI prints them as one line and exits 2."""


class EvonnxError(Exception):
    """A problem with the user's input (file, tensor, option), stated in one line."""


class ModelError(EvonnxError):
    """The ONNX model cannot be loaded, normalised or run."""


class CalibrationError(EvonnxError):
    """The calibration data does not fit the model."""


class EvxFormatError(EvonnxError):
    """An .evx container is malformed, corrupt or of an unsupported version."""


class BudgetError(EvonnxError):
    """No result within the user's budget: nothing is written (exit code 3)."""

    exit_code = 3
