"""Tools around the method; run each from the repository's root as a module:

    python -m tools.convert chexpert-5x200 --csv ... --out ...   # public data sets to manifests
    python -m tools.plot out --out docs/curve.png                # figures with Pillow alone
    python -m tools.fits                                         # the --batch-size that fits 8-24 GB cards

convert.py is the converters' command line; each data set's converter is its own file (iu_xray.py,
mimic_cxr.py, chexpert_5x200.py, ms_cxr.py), and tables.py holds the CSV helpers they share.
"""
