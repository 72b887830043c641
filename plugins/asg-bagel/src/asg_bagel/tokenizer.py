"""Tokenizers: the checkpoint's Qwen2 tokenizer (local files only), or a character-level one for the tiny preset.

BAGEL relies on four tokens: ``<|im_start|>`` (bos), ``<|im_end|>`` (eos), ``<|vision_start|>`` and
``<|vision_end|>``. Qwen2.5's vocabulary has all four; a tokenizer that lacks any is an error here
rather than a silent resize of the embeddings (the checkpoint's rows would no longer line up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asg.errors import DataError
from asg_bagel.model import SpecialTokens

SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def special_tokens(tokenizer: Any) -> SpecialTokens:
    """Ids of the four BAGEL tokens in ``tokenizer``; an error names any that is missing."""
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL}
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [tok for tok, i in ids.items() if i is None or (unk is not None and i == unk)]
    if missing:
        raise DataError(f"the tokenizer lacks BAGEL's special token(s) {', '.join(missing)}")
    return SpecialTokens(bos=ids[SPECIAL[0]], eos=ids[SPECIAL[1]], start_of_image=ids[SPECIAL[2]], end_of_image=ids[SPECIAL[3]])


def load_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in a checkpoint folder, read from local files only (no hub access)."""
    from transformers import AutoTokenizer

    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(f"BAGEL checkpoint folder {directory} has no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)


def char_tokenizer(vocab_size: int = 256) -> Any:
    """A character-level tokenizer (printable ASCII + <unk>) whose last four ids are BAGEL's special
    tokens, as in the tiny parity fixture (252..255 for a vocabulary of 256). Built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)]
    base = ["<unk>", "<pad>", *chars]
    if len(base) + len(SPECIAL) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is too small for {len(base)} characters and 4 special tokens")
    vocab = {tok: i for i, tok in enumerate(base)}
    filler = vocab_size - len(SPECIAL) - len(base)
    for i in range(filler):  # unused rows, so the special tokens land on the last ids
        vocab[f"<unused{i}>"] = len(vocab)
    for tok in SPECIAL:
        vocab[tok] = len(vocab)
    model = models.WordLevel(vocab=vocab, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # every character is a token
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   additional_special_tokens=list(SPECIAL))
    return fast
