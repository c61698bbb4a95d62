"""Command line: argv in, one module per command group; results printed, diagnostics logged."""
