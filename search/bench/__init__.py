"""Benchmarks (make bench*): each measures one claim side by side and writes its report under studies/."""
