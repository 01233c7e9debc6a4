"""The CLIP tokenizer of Stable Diffusion 1.x, built offline.

Stable Diffusion 1.x uses OpenAI CLIP's byte-level BPE (``openai/clip-vit-large-patch14``: 49,408
tokens, context 77). Its merges file ``bpe_simple_vocab_16e6.txt.gz`` ships inside ``open_clip``;
:func:`clip_tokenizer` rebuilds the vocabulary exactly as CLIP's ``SimpleTokenizer`` does (256 byte
symbols, the same + ``</w>``, the first 48,894 merges, ``<|startoftext|>``, ``<|endoftext|>``), writes
``vocab.json`` / ``merges.txt`` / ``tokenizer_config.json`` into a cache folder and loads it as a real
``transformers.CLIPTokenizer`` (pad = ``<|endoftext|>``, lower-casing, ``model_max_length`` 77, like
SD 1.5's ``tokenizer/`` folder). Nothing is downloaded.

Used when a base model has no reachable tokenizer (offline) and for the tiny test pipelines.

    tok = clip_tokenizer()
    tok("a photo of a cat").input_ids  # [49406, 320, 1125, 539, 320, 2368, 49407]
"""
from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

from adapters.io import temp_file_beside

from ..assets import package_file

VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # 48,894, as in CLIP's SimpleTokenizer


def bpe_path() -> Path:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (CLIP's BPE merges)."""
    return package_file("open_clip", "bpe_simple_vocab_16e6.txt.gz", "pip install open_clip_torch")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges) exactly as CLIP builds them: 49,408 tokens, 48,894 merges."""
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [BOS, EOS]
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
        raise RuntimeError(f"unexpected CLIP BPE file {bpe_path()}: {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return {t: i for i, t in enumerate(vocab)}, merges


def default_cache_dir() -> Path:
    root = os.environ.get("MEDPEFT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                           or os.path.expanduser("~/.cache"), "medpeft")
    return Path(root) / "clip_tokenizer"


def write_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Write a CLIP tokenizer folder (``CLIPTokenizer.from_pretrained``-loadable); atomic per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        # HF's merges.txt starts with a version line, which CLIP's file has in its place.
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": CONTEXT_LENGTH, "do_lower_case": True,
            "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
            "add_prefix_space": False, "errors": "replace", "clean_up_tokenization_spaces": True}, indent=2),
        "special_tokens_map.json": json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS,
                                               "pad_token": EOS}, indent=2),
    }
    for name, text in files.items():
        fd, tmp = temp_file_beside(folder / name)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, folder / name)
    return folder


@functools.lru_cache(maxsize=4)
def _load(folder: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def clip_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The offline CLIP tokenizer (a ``transformers.CLIPTokenizer``), written once into ``cache_dir``."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    if not all((folder / n).is_file() for n in ("vocab.json", "merges.txt", "tokenizer_config.json")):
        write_tokenizer_files(folder)
    tok = _load(str(folder))
    if len(tok) != VOCAB_SIZE:
        raise RuntimeError(f"the CLIP tokenizer in {folder} has {len(tok)} tokens, expected {VOCAB_SIZE}; "
                           "delete that folder to rebuild it")
    return tok


def token_count(tokenizer, text: str) -> int:
    """Tokens of ``text`` including ``<|startoftext|>`` and ``<|endoftext|>`` (77 = the full context)."""
    return len(tokenizer(text, truncation=False, add_special_tokens=True).input_ids)
