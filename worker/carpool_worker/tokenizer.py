"""Text <-> token ids through the ``tokenizers`` library, offline.

Contract: ``load_tokenizer(config)`` returns a :class:`TextCodec` that reads the checkpoint's
``tokenizer.json`` when there is one, and otherwise builds a byte-level tokenizer in code (256
byte tokens, then BOS and EOS), so presets work with nothing downloaded. The codec carries the
model's chat template (``chat.load_chat_template``: the checkpoint's, else the default), as a
Hugging Face tokenizer does; a broken template fails the load. ``IncrementalDecoder`` turns a
growing list of ids into text deltas without splitting a multi-byte character.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from .chat import ChatTemplate, load_chat_template
from .config import ModelConfig

BYTE_BOS = "<|begin_of_text|>"
BYTE_EOS = "<|end_of_text|>"


def byte_level_tokenizer() -> Tokenizer:
    """A BPE with no merges over the 256 byte-level symbols: every byte is one token."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # The byte-level alphabet maps bytes 0..255 to printable symbols; order them by byte value
    # so that token id == byte value, which keeps ids stable and easy to reason about in tests.
    byte_to_symbol = _bytes_to_unicode()
    vocab = {byte_to_symbol[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([BYTE_BOS, BYTE_EOS])
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what ByteLevel uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class TextCodec:
    """Encodes prompts and decodes completions for one model."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        bos_token_id: int | None,
        vocab_size: int,
        chat_template: ChatTemplate | None = None,
    ):
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.vocab_size = vocab_size
        self.chat_template = chat_template

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in it become their ids."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def token_text(self, token_id: int | None) -> str:
        """The text of one token ("" when there is none or the vocabulary lacks it)."""
        if token_id is None:
            return ""
        return self.tokenizer.id_to_token(token_id) or ""

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class IncrementalDecoder:
    """Yields the new text of each token, holding back an incomplete UTF-8 sequence.

    The text of each push is what decoding all the ids so far adds to the text already sent.
    With a byte-level decoder (the presets' tokenizer, and checkpoints such as Llama 3's), the
    text of a list of ids is the text of its first part plus the text of the rest whenever the
    first part's text is whole (it ends in no U+FFFD, so no UTF-8 sequence is split there); the
    decoder then decodes only the ids since the last whole text, so a token costs the same at
    any length. Other decoders (a leading space stripped, say) decode every id each time.
    """

    def __init__(self, codec: TextCodec):
        self.codec = codec
        self.ids: list[int] = []
        self.emitted = ""
        # Decode from here (a whole text ended just before it), or always from 0.
        self.start = 0
        self.additive = isinstance(codec.tokenizer.decoder, decoders.ByteLevel)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        ids = self.ids[self.start :] if self.start else self.ids
        text = self.codec.decode(ids)
        # A partial multi-byte character decodes to U+FFFD; wait for the rest of it.
        if text.endswith("\ufffd"):
            return ""
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        if self.additive:  # whole: the next push decodes only what follows
            self.start, self.emitted = len(self.ids), ""
        return delta


def load_tokenizer(config: ModelConfig) -> TextCodec:
    if config.checkpoint_dir is not None and (config.checkpoint_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(config.checkpoint_dir / "tokenizer.json"))
        codec = TextCodec(tokenizer, config.bos_token_id, config.vocab_size)
    else:
        # Presets and checkpoints without a tokenizer: bytes. For the bench shapes the ids above
        # 257 decode to nothing, which is fine for load generators that send token ids.
        bos = config.bos_token_id if config.name == "tiny" else None
        codec = TextCodec(byte_level_tokenizer(), bos, config.vocab_size)
    eos = config.eos_token_ids[0] if config.eos_token_ids else None
    codec.chat_template = load_chat_template(
        config.checkpoint_dir, codec.token_text(codec.bos_token_id), codec.token_text(eos)
    )
    return codec
