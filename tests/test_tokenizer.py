"""Byte-level BPE training on clean shards: HF layout, special tokens, chat template, determinism."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mai_models.config import TokenizerConfig
from mai_models.data.schema import CLEAN_SCHEMA, clean_shard_name
from mai_models.errors import MaiUserError
from mai_models.tokenizer.bpe import (
    CHAT_TEMPLATE,
    EOD_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    load_tokenizer,
    train_tokenizer,
)

VOCAB = 512
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_STDLIB_MODULES = (
    "textwrap",
    "argparse",
    "functools",
    "inspect",
    "typing",
    "subprocess",
    "tarfile",
    "zipfile",
    "email.message",
    "logging",
)


def stdlib_docs(n: int) -> list[str]:
    """Real English-ish text that is identical on every run: stdlib docstrings of 200+ characters."""
    docs: list[str] = []
    for name in _STDLIB_MODULES:
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200 and doc not in docs:
                    docs.append(doc)
    assert len(docs) >= n, f"only {len(docs)} docstrings found"
    return docs[:n]


def write_clean(clean_dir: Path, split: str, texts: list[str], shard_docs: int = 1000) -> None:
    clean_dir.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, max(len(texts), 1), shard_docs)):
        rows = []
        for i, text in enumerate(texts[start : start + shard_docs], start):
            sha = hashlib.sha256(text.encode()).hexdigest()
            rows.append(
                {
                    "doc_id": sha[:16],
                    "source": "stdlib",
                    "origin": f"doc:{i}",
                    "text": text,
                    "n_bytes": len(text.encode()),
                    "n_chars": len(text),
                    "sha256": sha,
                    "split": split,
                }
            )
        pq.write_table(
            pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), clean_dir / clean_shard_name(split, index)
        )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = stdlib_docs(200)
    clean = tmp_path_factory.mktemp("clean")
    write_clean(clean, "train", docs[:170], shard_docs=100)  # two train shards
    write_clean(clean, "valid", docs[170:185])
    write_clean(clean, "test", docs[185:])
    return clean


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tok")
    return out, train_tokenizer(TokenizerConfig(vocab_size=VOCAB, min_frequency=2), corpus, out)


def test_stats_count_train_split_only(trained: tuple[Path, dict]) -> None:
    _, stats = trained
    train_texts = stdlib_docs(200)[:170]
    assert stats == {
        "vocab_size": VOCAB,
        "train_docs": 170,
        "train_bytes": sum(len(t.encode()) for t in train_texts),
        "special_tokens": list(SPECIAL_TOKENS),
        "eod_id": EOD_ID,
    }


def test_special_tokens_have_fixed_ids(trained: tuple[Path, dict]) -> None:
    tok = load_tokenizer(trained[0])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.get_vocab_size() == VOCAB
    # Specials are whole tokens, never split into bytes.
    assert tok.encode("<|im_start|>user").ids[0] == SPECIAL_TOKENS.index("<|im_start|>")


def test_saved_files_load_offline_in_transformers(trained: tuple[Path, dict]) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out, _ = trained
    assert all((out / f).is_file() for f in HF_FILES)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    for loader in (PreTrainedTokenizerFast, AutoTokenizer):
        hf = loader.from_pretrained(str(out), local_files_only=True)
        assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id, hf.unk_token_id) == (
            EOD_ID,
            EOD_ID,
            PAD_ID,
            EOD_ID,
        )
        assert set(SPECIAL_TOKENS) <= set(hf.all_special_tokens)
        assert len(hf) == VOCAB
        # No BOS/EOS is added implicitly: the data stage alone decides where EOD goes.
        assert EOD_ID not in hf("hello world")["input_ids"]


@pytest.mark.parametrize(
    "text",
    [
        "Return the number of items.",
        "  leading spaces\tand tabs\n\ntrailing newline\n",
        "Unicode: naïve café, 日本語, emoji 🚀, math ∑ and — dashes",
        "def f(x):\n    return x ** 2  # code survives too",
    ],
)
def test_round_trip(trained: tuple[Path, dict], text: str) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = load_tokenizer(trained[0])
    assert tok.decode(tok.encode(text).ids) == text
    hf = PreTrainedTokenizerFast.from_pretrained(str(trained[0]))
    assert hf.decode(hf(text)["input_ids"]) == text


def test_chat_template_renders_chatml(trained: tuple[Path, dict]) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(trained[0]))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = hf(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(hf.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(hf.convert_tokens_to_ids("<|im_end|>")) == 2


def test_training_is_deterministic(corpus: Path, trained: tuple[Path, dict], tmp_path: Path) -> None:
    first, stats = trained
    # Same process, then a fresh interpreter (other hash seeds, fresh rayon pool).
    again = train_tokenizer(TokenizerConfig(vocab_size=VOCAB, min_frequency=2), corpus, tmp_path / "a")
    code = (
        "import sys; from pathlib import Path; from mai_models.config import TokenizerConfig;"
        "from mai_models.tokenizer.bpe import train_tokenizer;"
        f"train_tokenizer(TokenizerConfig(vocab_size={VOCAB}), Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(corpus), str(tmp_path / "b")],
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert again == stats
    for name in HF_FILES:
        expected = (first / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() == expected, name
        assert (tmp_path / "b" / name).read_bytes() == expected, name


def test_empty_train_split_is_a_user_error(corpus: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    write_clean(clean, "valid", stdlib_docs(3))
    with pytest.raises(MaiUserError, match="train split has no documents"):
        train_tokenizer(TokenizerConfig(vocab_size=VOCAB), clean, tmp_path / "tok")
    write_clean(clean, "train", [])  # a shard with zero rows is no better
    with pytest.raises(MaiUserError, match="train split has no documents"):
        train_tokenizer(TokenizerConfig(vocab_size=VOCAB), clean, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_load_tokenizer_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(MaiUserError, match="not found") as missing:
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(MaiUserError, match="not a readable tokenizer") as broken:
        load_tokenizer(tmp_path)
    assert "\n" not in str(missing.value) and "\n" not in str(broken.value)
