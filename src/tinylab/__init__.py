"""tinylab: reproduce and extend TinyLlama's three-stage pretraining."""

__version__ = "0.1.0"
