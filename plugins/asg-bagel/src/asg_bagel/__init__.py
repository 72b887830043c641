"""asg backbone plugin for BAGEL-7B-MoT (ByteDance Seed), re-implemented to load its public checkpoint."""
