"""Runs: a plan of (model, case, prompt) items in; answers and verdicts committed one by one to
the SQLite store out; imports and merges of result files (ours, the study's CSVs, shard stores) into it.
"""
