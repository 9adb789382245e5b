"""The schemas of params/data/: the tokenizer, the sources (hub, local, demo) and how documents
are packed; and the ramp of a stage's mixture weights."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from tinylab.config.loader import Schema


class TokenizerConfig(Schema):
    """Where the tokenizer comes from."""

    kind: Literal["hub", "path", "gguf", "train", "release"] = Field(
        description="hub: AutoTokenizer from a hub id; path: a local folder; gguf: a "
        "sentencepiece vocabulary in a GGUF file (default Llama-2's, from the llama-cpp-python "
        "sdist); train: byte-fallback BPE trained on the stage corpora; release: a released "
        "checkpoint's (tinylab.release)"
    )
    name_or_path: str | None = Field(
        None,
        description="hub id or folder (hub and path kinds); GGUF file (gguf kind, optional); the "
        "release (release kind)",
    )
    revision: str | None = Field(None, description="hub revision of the release (release kind)")
    vocab_size: PositiveInt | None = Field(None, description="vocabulary size (train kind)")
    train_bytes_per_source: PositiveInt = Field(
        4_000_000, description="text bytes per source (training split) the BPE is trained on"
    )

    @model_validator(mode="after")
    def _fields_for_kind(self) -> TokenizerConfig:
        if self.kind in ("hub", "path", "release") and not self.name_or_path:
            raise ValueError(f"tokenizer kind {self.kind!r} needs name_or_path")
        if self.kind == "train" and self.vocab_size is None:
            raise ValueError("tokenizer kind 'train' needs vocab_size")
        if self.kind == "train" and self.vocab_size is not None and self.vocab_size < 260:
            raise ValueError(
                "vocab_size must be at least 260 for a byte-fallback BPE (256 bytes + specials)"
            )
        return self


class HubSource(Schema):
    """Files of a Hugging Face hub dataset repository, read directly (jsonl, jsonl.zst/.gz,
    parquet) over `hf://` paths: no loading script runs, and each file is one unit of work."""

    kind: Literal["hub"]
    domain: str = Field(description="domain label used for per-domain validation and plots")
    path: str = Field(description="dataset id, e.g. cerebras/SlimPajama-627B")
    data_files: list[str] = Field(
        min_length=1,
        description="glob patterns of the files to read, relative to the repository root "
        "(** crosses folders)",
    )
    exclude_files: list[str] = Field(
        default_factory=list,
        description="glob patterns (fnmatch, relative to the repository root) of files to skip",
    )
    format: Literal["auto", "jsonl", "parquet"] = Field(
        "auto", description="file format; auto = from the name (.jsonl[.zst|.gz], .parquet)"
    )
    revision: str | None = Field(None, description="dataset revision (git ref) to pin")
    hub_root: str = Field(
        "hf://datasets",
        description="where dataset repositories live: the hub, or a local folder holding "
        "<owner>/<name>/ with the same relative paths (a mirror)",
    )
    text_field: str = Field("text", description="field holding the document text")
    exclude: dict[str, list[str]] = Field(
        default_factory=dict,
        description="drop documents whose (dotted) field has one of these values",
    )
    approx_tokens: PositiveFloat | None = Field(
        None, description="tokens the selected files hold (for `tinylab prepare --plan`)"
    )
    max_documents: PositiveInt | None = Field(None, description="read at most this many documents")
    max_bytes: PositiveInt | None = Field(
        None, description="stop after the document that reaches this many UTF-8 bytes"
    )


class LocalSource(Schema):
    """Local files (txt, jsonl, parquet), one or more glob patterns."""

    kind: Literal["local"]
    domain: str = Field(description="domain label used for per-domain validation and plots")
    paths: list[str] = Field(
        min_length=1, description="files or glob patterns; relative to the project root"
    )
    format: Literal["auto", "txt", "jsonl", "parquet"] = Field(
        "auto", description="file format; auto = from the extension"
    )
    text_field: str = Field("text", description="field holding the text (jsonl, parquet)")
    max_documents: PositiveInt | None = Field(None, description="read at most this many documents")
    max_bytes: PositiveInt | None = Field(
        None, description="stop after the document that reaches this many UTF-8 bytes"
    )


class DemoSource(Schema):
    """One of tinylab's built-in demo corpora, fetched from package registries into a cache."""

    kind: Literal["demo"]
    domain: str = Field(description="domain label used for per-domain validation and plots")
    corpus: str = Field(description="name of a built-in demo corpus")
    max_documents: PositiveInt | None = Field(None, description="read at most this many documents")
    max_bytes: PositiveInt | None = Field(
        None, description="stop after the document that reaches this many UTF-8 bytes"
    )


Source = Annotated[HubSource | LocalSource | DemoSource, Field(discriminator="kind")]


class DataConfig(Schema):
    """The corpora of a pipeline, its tokenizer and how documents are packed into windows."""

    params_kind: ClassVar[str] = "data"

    tokenizer: TokenizerConfig
    sources: dict[str, Source] = Field(min_length=1, description="named sources")
    seq_len: PositiveInt = Field(
        description="tokens per training sequence (windows hold seq_len + 1)"
    )
    add_bos: bool = Field(True, description="prepend BOS to every document")
    add_eos: bool = Field(True, description="append EOS to every document")
    validation_fraction: float = Field(
        0.01, gt=0, lt=0.5, description="share of each source's documents held out for validation"
    )
    shard_tokens: PositiveInt = Field(
        2**26, description="tokens per binary shard file (rounded down to whole windows)"
    )
    num_workers: PositiveInt | None = Field(
        None, description="tokenizer processes; default all cores"
    )
    seed: int = Field(3407, description="seed of the train/validation split")


class RampConfig(Schema):
    """Mixture weights that move linearly from `start` to the stage's mixture."""

    tokens: PositiveInt = Field(description="tokens (from the stage start) over which weights ramp")
    start: dict[str, NonNegativeFloat] = Field(
        description="weights at the stage start; sources not named start at 0"
    )
