"""tinylab.data: sources, tokenizer, tokenize + pack, the weighted mixture, the demo corpora.

tinylab prepare params/data/demo.yaml --out outputs/runs/demo/data

data = prepare(cfg.data, RunLayout(run_dir).data)     # or PackedData.open(...same folder)
sampler = MixtureSampler(stage.mixture, num_windows={s: data.num_windows(s) for s in
                         data.sources}, seq_len=data.seq_len, seed=stage.seed, ramp=stage.ramp)
source, index = sampler.source_at(window); tokens = data.window(source, index)
"""

from tinylab.data.errors import DataError
from tinylab.data.mixture import MixtureSampler
from tinylab.data.pack import prepare, prepare_run, token_dtype
from tinylab.data.packed import PackedData
from tinylab.data.sources import iter_documents
from tinylab.data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

__all__ = [
    "DataError",
    "MixtureSampler",
    "PackedData",
    "iter_documents",
    "load_tokenizer",
    "prepare",
    "prepare_run",
    "token_dtype",
    "tokenizer_hash",
    "train_tokenizer",
]
