"""What a run needs besides the method: none of it is momentum self-distillation.

options.py     train.py's option checks and the defaults sized from the run
prepare.py     train.py's stages before the loop (folders, resume, data, tokenizer, evaluation sets)
progress.py    what train.py prints and logs every --log-every steps
runtime.py     device, precision, peak memory on every OS, Ctrl-C, locks and atomic writes
checkpoint.py  checkpoints written atomically, read safely (weights_only=True), the resume checks
"""
