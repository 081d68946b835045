"""`python -m evonnx` runs the CLI."""
import sys

from evonnx.tools.cli import main

sys.exit(main())
