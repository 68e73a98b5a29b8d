"""Tools around the method; run each from the repository's root as a module:

    python -m tools.convert chexpert-5x200 --csv ... --out ...   # public data sets to manifests
    python -m tools.plot out --out docs/curve.png                # figures with Pillow alone
"""
