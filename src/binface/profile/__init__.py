"""Complexity accounting (larq convention) and latency measurement."""

from binface.profile.counter import LayerProfile, Profile, profile

__all__ = ["LayerProfile", "Profile", "profile"]
