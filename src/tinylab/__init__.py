"""tinylab: reproduce and extend TinyLlama's three-stage pretraining (its version: the package
metadata, `importlib.metadata.version("tinylab")`)."""
