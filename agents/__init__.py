"""Proposers: the agents that suggest changes to a task's editable code."""
