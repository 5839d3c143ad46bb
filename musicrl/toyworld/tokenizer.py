"""Word-level tokenizers over the toy world's vocabulary, for the toy MusicGen's T5 and the toy CLAP's RoBERTa.

A byte-level encoder would have to learn to spell before it could learn what "fast" means; on two cores
that is most of the budget. A word per token lets the text towers spend their training on meaning. Any
text still tokenizes: a word outside the world's vocabulary becomes ``<unk>``. Both are ordinary
``PreTrainedTokenizerFast`` objects saved as ``tokenizer.json``, so the platform's loaders read them as
they read a Hub checkpoint's.
"""

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from musicrl.models.tiny import with_t5_conventions
from musicrl.models.tiny_clap import MASK_TOKEN as ROBERTA_MASK
from musicrl.models.tiny_clap import with_roberta_conventions
from musicrl.toyworld.captions import vocabulary
from musicrl.toyworld.degrade import CLEAN_WORDS, DEFECT_WORDS, DEGREE_WORDS


PUNCTUATION = (",", ":", "-", ".")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # RoBERTa's ids 0, 1, 2, 3


def _words() -> list[str]:
    quality_words = [word for words in (*DEFECT_WORDS.values(), CLEAN_WORDS, DEGREE_WORDS) for word in words]
    quality = {part for word in quality_words for part in word.split("-")}
    return [*PUNCTUATION, *sorted(set(vocabulary()) | quality)]


def _tokenizer(specials: tuple[str, ...], extra: tuple[str, ...] = ()) -> Tokenizer:
    vocab = {token: i for i, token in enumerate((*specials, *_words(), *extra))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    return tokenizer


def t5_word_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """T5's conventions: ``words </s>``, pad 0, eos 1, unk 2."""
    return with_t5_conventions(_tokenizer(T5_SPECIALS), model_max_length)


def roberta_word_tokenizer(model_max_length: int = 32) -> PreTrainedTokenizerFast:
    """RoBERTa's conventions, as CLAP's text tower expects: ``<s> words </s>``, pad 1, ``<mask>`` last."""
    return with_roberta_conventions(_tokenizer(ROBERTA_SPECIALS, (ROBERTA_MASK,)), model_max_length)
