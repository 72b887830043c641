"""Backbones that ship with asg-core and helpers shared by backbone implementations."""
