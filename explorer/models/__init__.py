"""Models: requests in, responses out, through one Backend protocol (transformers,
OpenAI-compatible servers, vLLM); the model manager keeps what is loaded within a memory budget.
"""
