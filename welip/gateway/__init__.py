"""The gateway ingress: one Ray Serve deployment in front of every engine."""

from welip.gateway._ingress import Gateway, app

__all__ = ["Gateway", "app"]
