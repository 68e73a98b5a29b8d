"""Your own data: manifests of image paths and texts, checked and cached (read.py); the converters
of public data sets into manifests are tools/convert.py."""
