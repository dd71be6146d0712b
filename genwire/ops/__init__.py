"""Operator tools for a running pipeline: inspecting and replaying dead and parked records."""
