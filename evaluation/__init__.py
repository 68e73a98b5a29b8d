"""What eval.py scores with.

protocols.py  the frozen model's embeddings; zero-shot, retrieval and grounding maps with them
metrics.py    AUC-ROC, Recall@k, the few-shot linear probe, bootstrap intervals
grounding.py  where a sentence lands: patch-text maps, pointing game, CNR, mIoU; grounding manifests
sets.py       the data: the synthetic sets (cached); your classification, retrieval, grounding manifests
predict.py    a trained model on your own images: predict(), load_images(); eval.py --image
figures.py    eval.py --show and --show-grounding: a few items per class, drawn by tools/plot.py
"""
