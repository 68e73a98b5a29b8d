"""The studies behind the README's results; run each from the repository's root as a module:

    python -m experiments.ladder --report      # what pays, each arm at its own recipe
    python -m experiments.regimes --report     # MSD against CLIP by data regime
    python -m experiments.ablation --report    # the 76,800-sample ablation
    python -m experiments.profile_step         # where one training step's time goes

studies.py is what the studies share: run train.py as a user would, record each run at once.
"""
