"""Shared set-up for the example programs' tests.

The programs in ``examples/`` import their sibling modules by name, so that folder goes on
``sys.path``. (The persistent compilation cache shared by every test and subprocess is
set up in tests/conftest.py.)
"""

import sys

from examples_testlib import EXAMPLES

sys.path.insert(0, str(EXAMPLES))
