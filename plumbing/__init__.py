"""What a run needs besides the method: none of it is momentum self-distillation.

options.py     train.py's option checks and the defaults sized from the run
runtime.py     device, precision, peak memory on every OS, Ctrl-C, locks and atomic writes
checkpoint.py  checkpoints written atomically, read safely (weights_only=True), the resume checks
"""
