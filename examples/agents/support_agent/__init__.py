"""An example support agent served by WeLIP's agents app (see examples/agents/README.md)."""
