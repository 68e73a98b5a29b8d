"""What eval.py scores with.

metrics.py    AUC-ROC, the few-shot linear probe, bootstrap intervals
grounding.py  where a sentence lands: patch-text maps, pointing game, CNR, mIoU
sets.py       your evaluation data: classification, retrieval and grounding manifests
"""
