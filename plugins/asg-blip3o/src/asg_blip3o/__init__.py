"""asg backbone plugin for BLIP3o-8B, re-implemented to load its public checkpoint."""
