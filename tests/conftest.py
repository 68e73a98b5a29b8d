"""pytest's settings for this repository (kept here, so that the top level holds only the code):
the tests import the top-level modules (model.py, loss.py, ...) as a user running from the
repository does, and `python -m pytest` runs the fast suite; `-m slow` runs the long tests."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long tests (minutes on 2 CPU cores); run with "
                                       "`pytest -m slow`")


def pytest_collection_modifyitems(config, items):
    """Without -m, leave the slow tests out (what `addopts = -m "not slow"` would do)."""
    if config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
