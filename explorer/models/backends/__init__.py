"""Model backends: one small protocol (base.Backend), one module per way of running a model."""
