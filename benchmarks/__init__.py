"""asg benchmark suites: ``python -m benchmarks <suite> [options]`` (``--help`` lists them)."""
