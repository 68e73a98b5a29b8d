import os
import sys

# Tests import the top-level modules (model.py, loss.py, ...) as a user running from the repo does.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
