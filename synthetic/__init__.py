"""The procedural data set: radiograph-like studies with reports, nothing to download.

dataset.py    findings, studies, the training and evaluation sets, report noise, the cache
patients.py   a patient (anatomy and acquisition) and the details of each of its findings
radiograph.py drawing one radiograph-like image (and each finding's mask) from a patient
masks.py      connected pieces of a mask: what makes a finding's mask one region per side
reports.py    writing a study's report from many paraphrases, with negations
"""
