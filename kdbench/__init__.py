"""kdbench: a reproducible benchmark suite for knowledge distillation."""
__version__ = "0.1.0"
