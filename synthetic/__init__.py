"""The procedural data set: radiograph-like studies with reports, nothing to download.

dataset.py    patients, findings, the training and evaluation sets, report noise, the cache
radiograph.py drawing one radiograph-like image (and each finding's mask) from a patient
reports.py    writing a study's report from many paraphrases, with negations
"""
