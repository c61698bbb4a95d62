"""Analysis: stored answers in; the study's metrics, statistics, wording sensitivity, plots,
exports (answers with their metrics and a manifest) and the reproduction report out.
"""
