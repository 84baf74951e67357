#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer and tokenise the corpus splits.

Purpose
    Train a GPT-2-style byte-level BPE (Hugging Face ``tokenizers``) on the
    *train* split only, with one special token ``<|endoftext|>`` (id 0) that
    separates documents, then encode train / valid / test to uint16 arrays.

    The pre-tokenizer is ``ByteLevel(add_prefix_space=False, use_regex=True)``,
    i.e. exactly GPT-2's regex split, so llama.cpp's ``gpt-2`` pre-tokenizer
    (``tokenizer.ggml.pre = "gpt-2"``) splits text the same way.

Usage
    python models/train/train_tokenizer.py [--work models/train/work] [--vocab 8192]

Input
    WORK/corpus/{train,valid,test}.jsonl   from prepare_data.py

Output
    WORK/data/tokenizer.json, tokenizer_config.json   the tokenizer
    WORK/data/{train,valid,test}.npy   uint16 token ids; the pieces of a split
                                       are joined with <|endoftext|> (and one
                                       leads the array)
    WORK/data/meta.json    vocab size, token and UTF-8 byte counts per split

    WORK/data is what the GPU machine needs (about 13 MB), so it is the folder
    to carry there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"


def read_pieces(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def build(texts: list[str], vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, min_frequency=2, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def encode_split(tok: Tokenizer, pieces: list[str]) -> np.ndarray:
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(pieces, add_special_tokens=False):
        ids.append(eot)
        ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.uint16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    ap.add_argument("--vocab", type=int, default=8192)
    a = ap.parse_args(argv)
    corpus, out = a.work / "corpus", a.work / "data"
    out.mkdir(parents=True, exist_ok=True)

    splits = {s: read_pieces(corpus / f"{s}.jsonl") for s in ("train", "valid", "test")}
    tok = build(splits["train"], a.vocab)
    assert tok.token_to_id(EOT) == 0 and tok.get_vocab_size() == a.vocab, tok.get_vocab_size()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT, "eos_token": EOT, "unk_token": None, "pad_token": None,
        "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 1 << 20,
    }, indent=2) + "\n")

    meta = {"vocab_size": a.vocab, "eot_id": 0, "splits": {}}
    for s, pieces in splits.items():
        ids = encode_split(tok, pieces)
        assert ids.max() < a.vocab
        np.save(out / f"{s}.npy", ids)
        n_bytes = sum(len(p.encode("utf-8")) for p in pieces)
        meta["splits"][s] = {"tokens": int(ids.size), "bytes": n_bytes, "pieces": len(pieces),
                             "bytes_per_token": round(n_bytes / ids.size, 4)}
        # round trip: decoding gives the text back exactly
        sample = pieces[0][:20000]
        assert tok.decode(tok.encode(sample).ids) == sample
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
