"""Package and protocol versions. Kept import-free so ``harmonize --version`` stays instant."""

__version__ = "0.1.0"
