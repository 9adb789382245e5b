"""params/data/tinyllama.yaml against tiny local mirrors of its four hub datasets (tests/
_hub_mirrors.py): the real loading and packing code with only `hub_root` redirected (and a small
trained tokenizer and short windows, since the Llama tokenizer is on the hub too)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _hub_mirrors import SOURCES, make_mirrors, mirrored_config

from tinylab.config.data import DataConfig
from tinylab.config.loader import PARAMS_DIR, load_config
from tinylab.config.stage import StageConfig
from tinylab.data import DataError, MixtureSampler, PackedData, iter_documents, prepare
from tinylab.data.tokenizer import load_fast


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mirrors(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def packed(mirrors: Path, tmp_path_factory: pytest.TempPathFactory) -> PackedData:
    return prepare(mirrored_config(mirrors), tmp_path_factory.mktemp("data"), progress=False)


def test_each_source_loads_as_published(mirrors: Path) -> None:
    cfg = mirrored_config(mirrors)
    docs = {name: list(iter_documents(cfg.sources[name], name=name)) for name in SOURCES}
    # SlimPajama: the train chunks only, without the GitHub quarter
    assert len(docs["slimpajama"]) == 60 and all(
        d.startswith("slimtrai") for d in docs["slimpajama"]
    )
    # StarCoderData: the two language folders, none of the four special folders
    assert len(docs["starcoder"]) == 80 and not any("specialfolder" in d for d in docs["starcoder"])
    # Proof-Pile-2: its three subsets past the loading script, whatever their meta
    assert len(docs["proofpile"]) == 120 and all(d.startswith("mathdoc") for d in docs["proofpile"])
    assert len(docs["skypile"]) == 80 and all("你好世界" in d for d in docs["skypile"])


def test_the_real_hub_stays_the_default() -> None:
    cfg = load_config(PARAMS_DIR / "data" / "tinyllama.yaml", DataConfig)
    assert {s.hub_root for s in cfg.sources.values()} == {"hf://datasets"}


def test_packed_output_has_no_github_and_every_source(packed: PackedData) -> None:
    tokenizer = load_fast(packed.tokenizer_dir)
    for name in SOURCES:
        assert packed.num_windows(name) > 0
    slim = packed.index["sources"]["slimpajama"]["splits"]
    windows = np.concatenate(
        [packed.window("slimpajama", i) for i in range(packed.num_windows("slimpajama"))]
    )
    assert "githubdoc" not in tokenizer.decode(windows.tolist())
    assert slim["train"]["documents"] + slim["val"]["documents"] == 60


@pytest.mark.parametrize("stage", ["cooldown-mathcode", "cooldown-chinese"])
def test_token_shares_match_the_mixture(packed: PackedData, stage: str) -> None:
    cfg = load_config(PARAMS_DIR / "stages" / "tinyllama-v1.1" / f"{stage}.yaml", StageConfig)
    names = sorted(cfg.mixture)
    sampler = MixtureSampler(
        cfg.mixture,
        num_windows={n: packed.num_windows(n) for n in names},
        seq_len=packed.seq_len,
        seed=cfg.seed,
    )
    draws = 20_000
    sources, indices = sampler.take(0, draws)
    tokens = np.zeros(len(sampler.names))
    for source, index in zip(sources[:200], indices[:200], strict=True):  # the windows exist
        assert len(packed.window(sampler.names[source], int(index))) == packed.seq_len + 1
    for source in sources:
        tokens[source] += packed.seq_len + 1
    total = sum(cfg.mixture.values())
    for number, name in enumerate(sampler.names):
        p = cfg.mixture[name] / total
        share = tokens[number] / tokens.sum()
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / draws), (name, share, p)


def test_a_gated_dataset_says_how_to_log_in(monkeypatch: pytest.MonkeyPatch, mirrors: Path) -> None:
    import fsspec
    import httpx
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        request = httpx.Request("GET", "https://huggingface.co/api/datasets/bigcode/starcoderdata")
        response = httpx.Response(401, request=request)
        raise FileNotFoundError("bigcode/starcoderdata") from GatedRepoError(
            "gated", response=response
        )

    monkeypatch.setattr(fsspec.core, "url_to_fs", gated)
    cfg = load_config(PARAMS_DIR / "data" / "tinyllama.yaml", DataConfig)
    with pytest.raises(DataError) as err:
        list(iter_documents(cfg.sources["starcoder"], name="starcoder"))
    message = str(err.value)
    assert "sources.starcoder (bigcode/starcoderdata): the dataset is gated" in message
    assert "hf auth login" in message and "HF_TOKEN" in message and "\n" not in message


def test_missing_files_and_a_schema_mismatch_name_the_source(mirrors: Path) -> None:
    cfg = mirrored_config(mirrors, "sources.proofpile.data_files=[arxiv/test/*.jsonl.zst]")
    with pytest.raises(
        DataError, match=r"sources.proofpile.data_files: 'arxiv/test/\*.jsonl.zst' matches no file"
    ):
        list(iter_documents(cfg.sources["proofpile"], name="proofpile"))
    cfg = mirrored_config(mirrors, "sources.starcoder.exclude_files=[]")
    with pytest.raises(
        DataError, match=r"sources.starcoder: .*git-commits-cleaned.*no column \['content'\]"
    ):
        list(iter_documents(cfg.sources["starcoder"], name="starcoder"))


def test_a_damaged_file_is_one_line_naming_it(mirrors: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "hub"
    shutil.copytree(mirrors, root)
    arxiv = root / "EleutherAI" / "proof-pile-2" / "arxiv" / "train" / "arXiv_000.jsonl.zst"
    arxiv.write_bytes(arxiv.read_bytes()[:50])  # a truncated download
    cfg = mirrored_config(root)
    with pytest.raises(DataError) as err:
        list(iter_documents(cfg.sources["proofpile"], name="proofpile"))
    message = str(err.value)
    assert message.startswith("sources.proofpile: ") and "arXiv_000.jsonl.zst: " in message
    assert "ends inside a frame (a truncated file?)" in message and "\n" not in message
