"""Clean shards -> Megatron .bin/.idx: readable by Megatron-Core, in order, EOD-terminated, worker-proof."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mai_models.config import TokenizeConfig, TokenizerConfig
from mai_models.data.schema import CLEAN_SCHEMA, SPLITS, clean_shard_name
from mai_models.errors import MaiUserError
from mai_models.tokenizer.bpe import EOD_ID, EOD_TOKEN, load_tokenizer, train_tokenizer
from mai_models.tokenizer.shards import ShardStats, build_token_shards, token_dtype

VOCAB = 512
_MODULES = ("textwrap", "argparse", "functools", "inspect", "typing", "subprocess", "tarfile", "logging")
_MODULES += ("zipfile", "email.message")


def stdlib_docs(n: int) -> list[str]:
    """Deterministic real text: stdlib docstrings of 200+ characters."""
    docs: list[str] = []
    for name in _MODULES:
        for node in ast.walk(ast.parse(inspect.getsource(importlib.import_module(name)))):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200 and doc not in docs:
                    docs.append(doc)
    assert len(docs) >= n
    return docs[:n]


def write_clean(clean_dir: Path, split: str, texts: list[str], shard_docs: int) -> None:
    clean_dir.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, len(texts), shard_docs)):
        chunk = texts[start : start + shard_docs]
        shas = [hashlib.sha256(t.encode()).hexdigest() for t in chunk]
        table = pa.Table.from_pydict(
            {
                "doc_id": [s[:16] for s in shas],
                "source": ["stdlib"] * len(chunk),
                "origin": [f"doc:{start + i}" for i in range(len(chunk))],
                "text": chunk,
                "n_bytes": [len(t.encode()) for t in chunk],
                "n_chars": [len(t) for t in chunk],
                "sha256": shas,
                "split": [split] * len(chunk),
            },
            schema=CLEAN_SCHEMA,
        )
        pq.write_table(table, clean_dir / clean_shard_name(split, index))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    docs = stdlib_docs(200)
    # A literal end-of-text marker inside a document must stay text, not become a document boundary.
    docs[5] = f"Models print {EOD_TOKEN} between samples; this line quotes it.\n" + docs[5]
    texts = {"train": docs[:160], "valid": docs[160:180], "test": docs[180:]}
    clean = tmp_path_factory.mktemp("clean")
    for split, split_texts in texts.items():
        write_clean(clean, split, split_texts, shard_docs=50)  # several shards and batches per split
    return clean, texts


@pytest.fixture(scope="module")
def tokenizer_dir(corpus: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(TokenizerConfig(vocab_size=VOCAB), corpus[0], out)
    return out


@pytest.fixture(scope="module")
def built(corpus: tuple[Path, dict], tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("shards")
    # Small batches so the in-process path really pipelines several encode calls.
    stats = build_token_shards(TokenizeConfig(workers=1, batch_docs=16), corpus[0], tokenizer_dir, out)
    return out, stats


def _indexed(prefix: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Transformer Engine and Apex are not installed" on CPU
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(str(prefix))


def test_documents_match_input_order_and_end_with_eod(built, corpus, tokenizer_dir: Path) -> None:
    out, stats = built
    tok = load_tokenizer(tokenizer_dir)
    tok.encode_special_tokens = True
    for split, texts in corpus[1].items():
        ds = _indexed(out / f"{split}_text_document")
        assert len(ds) == stats.splits[split].docs == len(texts)
        assert ds.index.dtype == np.uint16 == token_dtype(VOCAB)
        assert int(ds.sequence_lengths.sum()) == stats.splits[split].tokens
        assert list(ds.document_indices) == list(range(len(texts) + 1))  # one sequence per document
        for i, text in enumerate(texts):
            ids = ds[i]
            assert ids[-1] == EOD_ID and EOD_ID not in ids[:-1]
            assert ids[:-1].tolist() == tok.encode(text).ids
            assert tok.decode(ids[:-1].tolist()) == text


def test_stats_and_manifest(built, corpus) -> None:
    out, stats = built
    texts = corpus[1]
    for split in SPLITS:
        s = stats.splits[split]
        assert (s.docs, s.bytes, s.prefix) == (
            len(texts[split]),
            sum(len(t.encode()) for t in texts[split]),
            f"{split}_text_document",
        )
    assert stats.tokens == sum(s.tokens for s in stats.splits.values())
    manifest = stats.deterministic()
    assert manifest["tokens_include_eod"] and manifest["vocab_size"] == VOCAB and manifest["eod_id"] == EOD_ID
    assert "seconds" not in json.dumps(manifest)  # timings stay out of the DVC-tracked output
    timing = stats.timing()
    assert timing["seconds"] > 0 and timing["mb_s"] > 0 and timing["tokens_s"] > 0


def test_worker_processes_give_identical_bytes(built, corpus, tokenizer_dir: Path, tmp_path: Path) -> None:
    out, stats = built
    cfg = TokenizeConfig(workers=2, batch_docs=16)
    forced = build_token_shards(cfg, corpus[0], tokenizer_dir, tmp_path / "p", strategy="processes")
    auto = build_token_shards(cfg, corpus[0], tokenizer_dir, tmp_path / "a")
    assert (forced.strategy, auto.strategy) == ("processes", "inprocess")  # tiny corpus stays in-process
    for other in (forced, auto):
        assert other.deterministic() == stats.deterministic()
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 * len(SPLITS)
    for name in files:
        expected = (out / name).read_bytes()
        assert (tmp_path / "p" / name).read_bytes() == expected, name
        assert (tmp_path / "a" / name).read_bytes() == expected, name


def test_empty_split_has_no_files(corpus, tokenizer_dir: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    write_clean(clean, "train", corpus[1]["train"][:30], shard_docs=50)
    write_clean(clean, "valid", corpus[1]["valid"][:5], shard_docs=50)
    out = tmp_path / "shards"
    out.mkdir()
    (out / "test_text_document.bin").write_bytes(b"stale")  # from an earlier, larger corpus
    stats = build_token_shards(TokenizeConfig(workers=1), clean, tokenizer_dir, out)
    assert stats.splits["test"].docs == 0 and stats.splits["test"].prefix is None
    assert not (out / "test_text_document.bin").exists() and not (out / "test_text_document.idx").exists()
    assert len(_indexed(out / "valid_text_document")) == 5


def test_missing_inputs_are_user_errors(corpus, tokenizer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MaiUserError, match="not found"):
        build_token_shards(TokenizeConfig(), corpus[0], tmp_path, tmp_path / "out")
    with pytest.raises(MaiUserError, match="no clean shards"):
        build_token_shards(TokenizeConfig(), tmp_path, tokenizer_dir, tmp_path / "out")


def test_token_dtype_follows_megatron() -> None:
    assert token_dtype(65_000) is np.uint16
    assert token_dtype(128_256) is np.int32


def test_gpt_dataset_reads_the_shards(built, tokenizer_dir: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.tokenizers import MegatronTokenizer

    out, stats = built
    assert isinstance(stats, ShardStats)
    seq = 32
    # Megatron's "huggingface" tokenizer library reads the saved directory through AutoTokenizer.
    tokenizer = MegatronTokenizer.from_pretrained(
        str(tokenizer_dir), metadata_path={"library": "huggingface"}
    )
    assert (tokenizer.eod, tokenizer.pad, tokenizer.vocab_size) == (EOD_ID, 1, VOCAB)
    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=seq,
        blend_per_split=[([str(out / f"{split}_text_document")], None) for split in SPLITS],
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(tmp_path / "cache"),
    )
    datasets = BlendedMegatronDatasetBuilder(GPTDataset, [8, 8, 8], lambda: True, config).build()
    for split, ds in zip(SPLITS, datasets, strict=True):
        assert ds is not None and len(ds) >= 8
        # A full epoch of non-overlapping (seq + 1)-token windows, each window shifted into input/label.
        assert len(ds) == (stats.splits[split].tokens - 1) // seq
        sample = ds[0]
        assert sample["tokens"].shape == sample["labels"].shape == (seq,)
        assert sample["tokens"][1:].tolist() == sample["labels"][:-1].tolist()
        assert int(sample["tokens"].max()) < VOCAB
