"""The `tiny` tokenizer: a byte-level BPE trained on ShapesWorld text, wrapped as a transformers
fast tokenizer with a ChatML chat template.

Byte-level means any text encodes (unknown words just take more tokens); the role tags are atomic.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from asg.backbones.tiny.templates import TAGS

PAD, BOS, EOS, IMAGE = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, IMAGE)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat(user: str, *, image: bool, system: str | None = None) -> str:
    """ChatML text of one user turn followed by the assistant header (same as CHAT_TEMPLATE)."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    content = f"{IMAGE}\n{user}" if image else user
    return f"{head}<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def train_tokenizer(corpus: Iterable[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    """Train the BPE on ``corpus`` (deterministic for a given corpus order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAGS), special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return _wrap(tok)


def _wrap(tok):  # tokenizers.Tokenizer -> PreTrainedTokenizerFast
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[BOS, IMAGE], padding_side="left",
    )
    fast.add_tokens([t for t in TAGS if t not in fast.get_vocab()])
    fast.chat_template = CHAT_TEMPLATE
    fast.image_token = IMAGE
    return fast


def load_tokenizer(directory: str | Path):  # -> PreTrainedTokenizerFast
    """Load the tokenizer saved by :func:`save_tokenizer` (``tokenizer.json``)."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {directory}")
    tok = _wrap(Tokenizer.from_file(str(path)))
    return tok


def save_tokenizer(tokenizer, directory: str | Path) -> Path:
    path = Path(directory) / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(path))
    return path
