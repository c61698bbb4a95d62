"""Scoring: a model's free-text answer and the question it was asked in; a verdict out (positive,
negative, refusal, hedge, unclear) with the words that decided it, from the answer reader or an LLM judge.
The reader needs nothing but schema.py, so prompts use it too (an edited wording's polarity).
"""
