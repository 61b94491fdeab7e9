"""Whether a model and a data directory speak the same vocabulary.

A model's embedding has `model.vocab_size` rows; token ids of a data directory
come from its tokenizer. Training on ids past the last row fails deep inside the
embedding, and evaluating a run on data cut by another tokenizer scores
nonsense, so both are checked up front and refused in one line.

The data's side is its manifest (`vocab_size`, `tokenizer_sha256`), else its
tokenizer model file (a challenge download without a manifest); a directory with
neither is unknown and passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgolf.data import MANIFEST_NAME, load_manifest, tokenizer_path
from pgolf.errors import ConfigError, DataError
from pgolf.tokenizer import Tokenizer, file_sha256


@dataclass(frozen=True)
class DataVocab:
    vocab_size: int | None
    tokenizer_sha256: str | None


def data_vocab(data_dir: str | Path) -> DataVocab:
    """The vocabulary size and tokenizer hash of DATA_DIR (None where it cannot be told)."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir) if (data_dir / MANIFEST_NAME).exists() else {}
    size, sha = manifest.get("vocab_size"), manifest.get("tokenizer_sha256")
    tok = tokenizer_path(data_dir, manifest)
    if (size is None or sha is None) and tok.exists():
        sha = sha or file_sha256(tok)
        if size is None:
            try:
                size = Tokenizer(tok).vocab_size
            except (OSError, RuntimeError):
                raise DataError(f"{tok}: cannot read the tokenizer model") from None
    return DataVocab(int(size) if size is not None else None, sha)


def training_vocab(config_vocab: int, explicit: bool, data_dir: str | Path) -> int:
    """The vocabulary size to train with on DATA_DIR.

    Not `explicit` (the value is a preset's default): the data's, so any prepared directory trains.
    `explicit` (the user named it): the value itself, refused when the data's differs.
    """
    have = data_vocab(data_dir).vocab_size
    if have is None or have == config_vocab:
        return config_vocab
    if not explicit:
        return have
    raise ConfigError(f"model.vocab_size is {config_vocab} but {data_dir}'s tokenizer has {have} tokens; "
                      f"use --set model.vocab_size={have} (or drop the setting to follow the data), "
                      f"or prepare the data with --vocab-size {config_vocab}")


def check_run_data(run_tokenizer_sha256: str | None, run_vocab: int, data_dir: str | Path) -> None:
    """Refuse to score a run on DATA_DIR when its tokenizer is not the one the run trained with.

    The tokenizer hash decides when the run recorded one; older runs are held to the vocabulary size."""
    have = data_vocab(data_dir)
    if run_tokenizer_sha256 and have.tokenizer_sha256 and have.tokenizer_sha256 != run_tokenizer_sha256:
        raise DataError(f"{data_dir}: tokenizer {have.tokenizer_sha256[:12]} (vocab {have.vocab_size}) is not the "
                        f"run's {run_tokenizer_sha256[:12]} (vocab {run_vocab}); pass --data with a directory "
                        f"prepared by the run's tokenizer (`pgolf data prepare --tokenizer`)")
    if have.vocab_size is not None and have.vocab_size != run_vocab:
        raise DataError(f"{data_dir}: tokenizer has {have.vocab_size} tokens but the run's model has {run_vocab}; "
                        f"pass --data with a directory prepared by the run's tokenizer")
