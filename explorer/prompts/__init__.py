"""Prompts: a task from the catalog in; prompt variants with their polarity (and the wording
families built from them) out, then the chat messages of a request.
"""
