"""data.kind text: plain text in named domains, tokenised once and cut into blocks (docs/language-models.md).

A domain is a text file, a folder of .txt / .rst / .md files (recursive), or a glob pattern (any files it
matches, `/usr/share/perl/5.36.0/pod/*.pod`); `package:name/sub/path` starts inside an installed Python
package. A file of a folder or a pattern is one document; a single file is cut into documents of about
DOCUMENT_CHARS characters at paragraph breaks, so that even one book splits. Each domain's documents are
split into test, val, pretrain (the zoo's specialists) and train with the split seed, so that a
document's text is in one split only and every domain is in every split.

Each split's documents of a domain are tokenised, joined with the tokenizer's end-of-sequence token and cut
into blocks of `block + 1` tokens (each position's next token is in the block); the last one is padded
with -1, which the target keeps (never scored, taught or counted) and the inputs turn into token 0
(after the last real token, so no real position attends to it). Blocks of all domains are one dataset
whose `labels` are their domain's index (`domains` names them). Tokenised blocks are cached under
$KT_SWARM_CACHE/text, keyed by the files, the tokenizer and the settings.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from kt_swarm.config import DataConfig
from kt_swarm.errors import UserError

SUFFIXES = {".txt", ".rst", ".md"}
DOCUMENT_CHARS = 8000  # a single file's documents: about this long, cut at paragraph breaks


def resolve(source: str, who: str) -> Path | str:
    """`package:name/rest` -> the path inside the installed package; anything else as a path (or a pattern)."""
    if not source.startswith("package:"):
        return source if any(c in source for c in "*?[") else Path(source).expanduser()
    name, _, rest = source.removeprefix("package:").partition("/")
    spec = importlib.util.find_spec(name) if name else None
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots and spec and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    if not roots:
        raise UserError(f"{who}: package '{name}' is not installed (source {source})")
    full = str(Path(roots[0]) / rest)
    return full if any(c in rest for c in "*?[") else Path(full)


def documents(source: str, who: str) -> list[tuple[str, str]]:
    """A domain's documents as (name, text), in a fixed order."""
    where = resolve(source, who)
    if isinstance(where, str):  # a pattern
        files = sorted(Path(f) for f in glob.glob(where, recursive=True) if Path(f).is_file())
    elif where.is_dir():
        files = sorted(f for f in where.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
    elif where.is_file():
        return _cut(where.name, _read(where, who))
    else:
        raise UserError(f"{who}: '{source}' does not exist")
    docs = [(str(f), _read(f, who)) for f in files]
    docs = [(name, text) for name, text in docs if text.strip()]
    if not docs:
        raise UserError(f"{who}: no text in '{source}' (a file, a folder of {', '.join(sorted(SUFFIXES))} files, or a pattern)")
    return docs


def _read(path: Path, who: str) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"{who}: cannot read '{path}': {e.strerror}") from None


def _cut(name: str, text: str) -> list[tuple[str, str]]:
    """One file's text as documents of about DOCUMENT_CHARS characters, cut at blank lines."""
    docs, current = [], []
    size = 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= DOCUMENT_CHARS:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if "".join(current).strip():
        docs.append("\n\n".join(current))
    return [(f"{name}#{i}", d) for i, d in enumerate(docs) if d.strip()]


def split_documents(count: int, cfg: DataConfig, domain: int) -> dict[str, list[int]]:
    """Document indices of one domain per split: test, val, pretrain, then train, in the split seed's order."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(cfg.split_seed * 1009 + domain)).tolist()
    out, at = {}, 0
    for split, fraction in (("test", cfg.text.test_fraction), ("val", cfg.val_fraction), ("pretrain", cfg.pretrain_fraction)):
        n = max(1, round(fraction * count)) if fraction > 0 else 0
        out[split], at = sorted(order[at : at + n]), at + n
    out["train"] = sorted(order[at:])
    return out


def blocks(token_lists: list[list[int]], eos: int, block: int) -> torch.Tensor:
    """Documents' tokens joined with `eos` between them, cut into rows of block + 1 tokens (the last padded with -1)."""
    stream = []
    for tokens in token_lists:
        if stream:
            stream.append(eos)
        stream.extend(tokens)
    if not stream:
        return torch.empty(0, block + 1, dtype=torch.long)
    # Consecutive blocks share one token: the last of a block is the first input of the next, so every
    # token but the first is a target exactly once.
    starts = range(0, max(len(stream) - 1, 1), block)
    out = torch.full((len(starts), block + 1), -1, dtype=torch.long)
    for row, s in enumerate(starts):
        piece = stream[s : s + block + 1]
        out[row, : len(piece)] = torch.tensor(piece)
    return out


def load_text(cfg: DataConfig, tokenizer) -> dict:
    """Every domain's blocks per split: {"tokens": [n, block + 1], "labels": [n] domain index, "splits":
    {split: ids}, "domains": [name], "source": ...}; cached."""
    text = cfg.text
    found = {name: documents(source, f"data.text.domains.{name}") for name, source in text.domains.items()}
    key = hashlib.sha256(json.dumps({
        "files": {name: [(n, len(t), hashlib.sha1(t.encode()).hexdigest()) for n, t in docs] for name, docs in found.items()},
        "tokenizer": fingerprint(tokenizer), "block": text.block, "seed": cfg.split_seed, "max": text.max_documents,
        "fractions": [text.test_fraction, cfg.val_fraction, cfg.pretrain_fraction]}, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("KT_SWARM_CACHE") or Path.home() / ".cache" / "kt_swarm") / "text" / f"{key}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    rows, labels, splits = [], [], {s: [] for s in ("test", "val", "pretrain", "train")}
    at = 0
    for d, (name, docs) in enumerate(found.items()):
        if text.max_documents:
            keep = torch.randperm(len(docs), generator=torch.Generator().manual_seed(cfg.split_seed))[: text.max_documents]
            docs = [docs[i] for i in sorted(keep.tolist())]
        for split, ids in split_documents(len(docs), cfg, d).items():
            tokens = tokenizer([docs[i][1] for i in ids], add_special_tokens=False)["input_ids"] if ids else []
            part = blocks(tokens, eos, text.block)
            rows.append(part)
            labels.append(torch.full((len(part),), d, dtype=torch.long))
            splits[split].append(torch.arange(at, at + len(part)))
            at += len(part)
    out = {"tokens": torch.cat(rows), "labels": torch.cat(labels),
           # each split in the split seed's order, so that a cap (data.max_per_split) keeps every domain
           "splits": {s: _shuffled(torch.cat(v), cfg.split_seed) for s, v in splits.items()}, "domains": list(found),
           "source": ", ".join(f"{n}={s}" for n, s in text.domains.items())}
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save(out, partial)
    partial.replace(cache)  # whole or absent: a concurrent run reads one or the other
    return out


def _shuffled(ids: torch.Tensor, seed: int) -> torch.Tensor:
    return ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]


def fingerprint(tokenizer) -> str:
    """What makes two tokenizers cut text alike: the vocabulary, the added tokens and the special tokens."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps({str(k): str(v) for k, v in tokenizer.special_tokens_map.items()}, sort_keys=True).encode())
    h.update(json.dumps(sorted((int(i), str(t)) for i, t in tokenizer.added_tokens_decoder.items())).encode())
    return h.hexdigest()[:16]
