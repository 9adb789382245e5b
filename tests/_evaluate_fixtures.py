"""Helpers of the tinylab.evaluate tests: a tiny tokenizer, model folder and local tasks."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tinylab.config.model import ModelConfig
from tinylab.model import build_model, save_hf

TINY_MODEL = ModelConfig(
    vocab_size=320,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    attention="sdpa",
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Question: Which is heavier? Answer:",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "葡萄美酒夜光杯，欲饮琵琶马上催。评论：质量还不错\n情感：正面",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (Llama's special ids: <unk>=0, <s>=1, </s>=2) that adds <s> on request."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_MODEL.vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_hf_dir(folder: Path, *, seed: int = 0) -> Path:
    """An exported HF folder (safetensors + tokenizer) of a tiny random model."""
    model = build_model(TINY_MODEL, seed=seed)
    return save_hf(model, folder, tokenizer=tiny_tokenizer())


ARC_ITEMS = [
    ("Which gas do plants take in?", ["oxygen", "carbon dioxide", "helium", "neon"], 1),
    ("What melts ice fastest?", ["salt", "sand", "sawdust", "paper"], 0),
    ("Which planet is closest to the Sun?", ["Venus", "Earth", "Mercury", "Mars"], 2),
    ("What do bees make?", ["milk", "silk", "wax and honey", "wool"], 2),
    ("Which is a mammal?", ["shark", "whale", "trout", "frog"], 1),
    ("What force pulls objects to Earth?", ["friction", "magnetism", "gravity", "tension"], 2),
    ("Which tool measures temperature?", ["ruler", "thermometer", "scale", "clock"], 1),
    ("What is frozen water called?", ["steam", "ice", "fog", "dew"], 1),
]


def arc_task(folder: Path, name: str = "local_arc_easy") -> Path:
    """A local task in ARC's hub format (allenai/ai2_arc fields) that includes lm-eval's own
    arc_easy.yaml and only swaps the dataset for local JSON: the hub task's code path."""
    import lm_eval

    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": f"q{i}",
            "question": question,
            "choices": {"text": choices, "label": list("ABCD")},
            "answerKey": "ABCD"[gold],
        }
        for i, (question, choices, gold) in enumerate(ARC_ITEMS)
    ]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    arc_yaml = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    spec = {
        "include": str(arc_yaml),
        "task": name,
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"train": str(data), "test": str(data)}},
        "validation_split": None,
        "test_split": "test",
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder
