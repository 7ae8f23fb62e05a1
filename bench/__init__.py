"""softiou's benchmark: ``python -m bench --help``."""
