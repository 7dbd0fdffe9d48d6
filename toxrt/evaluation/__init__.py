"""Accuracy against a ground truth (``toxrt evaluate``): ``groundtruth`` (the CSV), ``metrics`` (the
identity measures), ``mot`` (IDF1 and MOTA from motmetrics).
"""
