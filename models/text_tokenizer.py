"""A byte-level tokenizer built offline, for the smoke preset's tiny text models.

Real checkpoints ship their own tokenizer; the tiny random-init models of the smoke preset need
one that can be built with no download: every byte is a token (no merges), plus the special
tokens the model family expects. Text round-trips exactly; it is just long.
"""

from transformers import PreTrainedTokenizerFast


def byte_tokenizer(
    specials: list[str], eos: str, pad: str, wrap: tuple[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with 256 byte tokens (ids 0-255) followed by ``specials`` in order.

    ``wrap``: (start, end) special tokens put around every encoded text (CLIP-style), if given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.eos_token, tokenizer.pad_token = eos, pad
    if wrap is not None:
        start, end = wrap
        ids = [(token, tokenizer.convert_tokens_to_ids(token)) for token in wrap]
        backend_with_wrap = tokenizer.backend_tokenizer
        backend_with_wrap.post_processor = processors.TemplateProcessing(
            single=f"{start} $A {end}", special_tokens=ids
        )
    return tokenizer
