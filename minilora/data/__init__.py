"""Small real data sets for the demos; each ships with a package or with Python itself."""
