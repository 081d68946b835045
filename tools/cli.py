"""The `evonnx` command line: one subcommand per module, user errors as one line and exit code 2 (3: no result
within the budget)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings

from evonnx import __version__
from evonnx.errors import EvonnxError
from evonnx.tools.interrupt import entry_point

# name -> module under evonnx.tools exposing add_parser(subparsers) and run(args) -> int
COMMANDS = {
    "eval": "cmd_eval",
    "zoo": "cmd_zoo",
    "corpus": "cmd_corpus",
    "compress": "cmd_compress",
    "demo": "cmd_demo",
    "decode": "cmd_decode",
    "inspect": "cmd_inspect",
    "calib": "cmd_calib",
}
_SEARCH = "pip install 'evonnx[gpu]' (ONNX Runtime with CUDA) or 'evonnx[cpu]'"
# optional module -> how to install it: decoding needs none of them
EXTRAS = {"onnxruntime": _SEARCH, "onnx_graphsurgeon": _SEARCH, "rapidfuzz": _SEARCH, "scipy": _SEARCH,
          "torch": "pip install 'evonnx[torch]'", "matplotlib": "pip install 'evonnx[report]'",
          "yaml": "pip install 'evonnx[yaml]'", "tokenizers": "pip install 'evonnx[corpus]'",
          "PIL": "pip install 'evonnx[corpus]'", "soundfile": "pip install 'evonnx[corpus]'",
          "ray": "pip install 'evonnx[distributed]'"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evonnx", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    parser.add_argument("--version", action="version", version=f"evonnx {__version__}")
    parser.add_argument("--quiet", action="store_true", help="print only results and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"evonnx.tools.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"evonnx.tools.{module}":
                raise
            continue  # a command whose module is not part of this build
        mod.add_parser(sub).set_defaults(handler=mod.run)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    print(f"evonnx: warning: {message}", file=sys.stderr)


class _LogLines(logging.Handler):
    """The package logger's records as plain lines on stderr (stdout holds results), written above any
    progress bar; warnings marked as such."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            text = record.getMessage()
            tqdm.write(f"warning: {text}" if record.levelno >= logging.WARNING else text, file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


def _show_logs(debug: bool, quiet: bool) -> None:
    """The library logs to the `evonnx` logger; the command shows its info lines (errors only with --quiet)."""
    logger = logging.getLogger("evonnx")
    logger.handlers[:] = [_LogLines()]
    logger.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    return entry_point(lambda: _main(argv), "evonnx")


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the global flags are accepted anywhere on the line (`evonnx eval m.onnx --debug`)
    debug, quiet = "--debug" in argv, "--quiet" in argv
    argv = [a for a in argv if a not in ("--debug", "--quiet")]
    if not debug:
        warnings.showwarning = _warning_line
        logging.getLogger().setLevel(logging.ERROR)
    _show_logs(debug, quiet)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.debug, args.quiet = debug, quiet
        return int(args.handler(args) or 0)
    except EvonnxError as exc:
        if debug:
            traceback.print_exc()
        print(f"evonnx: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in EXTRAS:
            return _internal(exc, debug)
        if debug:
            traceback.print_exc()
        print(f"evonnx: error: `evonnx {args.command}` needs {root}, which is not installed: {EXTRAS[root]}",
              file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output, missing directories: the user's environment, not a bug
        if debug:
            traceback.print_exc()
        print(f"evonnx: error: {exc.filename or ''}: {exc.strerror or exc}".replace(": : ", ": "), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line unless --debug
        return _internal(exc, debug)


def _internal(exc: Exception, debug: bool) -> int:
    """A bug: one line unless --debug; exit code 1."""
    if debug:
        traceback.print_exception(exc)
    print(f"evonnx: internal error: {exc.__class__.__name__}: {exc} (rerun with --debug for a traceback)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
