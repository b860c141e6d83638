"""The lecture's side paths: sampling labs and side-by-side comparisons."""
