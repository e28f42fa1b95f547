"""One module per experiment; each is a spec class plus a `run(spec, out=..., ...)` function."""
