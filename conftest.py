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


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # NOTE: tests run on 2-core CI machines; one thread avoids oversubscription in subprocesses too.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
