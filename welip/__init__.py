"""WeLIP: a Ray-native LLM infrastructure platform."""

__version__ = "0.1.0"
