"""A tiny, randomly initialised model shaped like K2-Think, built in-process for the data-plane suite.

K2-Think is a Qwen2-architecture causal LM (40 attention heads, 8 KV heads, head dim 128, reasoning
output as ``<think>…</think>`` then the answer). The model written here keeps what matters to the
serving stack -- the Qwen2 architecture, head dim 128 (vLLM's CPU attention kernels do not support
small head dims such as 16), grouped-query attention (fewer KV heads than attention heads), the
chat special tokens and a chat template whose assistant turn opens with ``<think>\\n`` -- and shrinks
everything else so that it is written in a few seconds and loads in a few hundred MiB of RAM.

Nothing is downloaded: the byte-level BPE tokenizer is trained with ``tokenizers`` on generated
text, and the weights come from ``Qwen2ForCausalLM(config)`` under a fixed seed.

Usage::

    python e2e/dataplane/tiny_model.py /tmp/tiny-k2think
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Shape: K2-Think's (Qwen2.5-32B) proportions at toy scale.
HIDDEN_SIZE = 512
NUM_ATTENTION_HEADS = 4  # head_dim = 512 / 4 = 128, as in K2-Think
NUM_KEY_VALUE_HEADS = 2  # grouped-query attention, 2 query heads per KV head
NUM_HIDDEN_LAYERS = 2
INTERMEDIATE_SIZE = 1024
# Room for the chain suite's drain scenario, whose streams must outlast Serve's scale-in decision
# (RoPE: the position range costs no weights).
MAX_POSITION_EMBEDDINGS = 16384
TOKENIZER_VOCAB_SIZE = 2048

# Qwen-style ChatML; the generation prompt opens the reasoning block like K2-Think's template does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set content = message['content'] -%}"
    "{%- else -%}"
    "{%- set content = message['content'] | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n' }}"
    "{%- endif -%}"
)

_WORD_TEXT = (
    "the a an of to in is are was be model token think reason answer question step first "
    "then so because therefore prime number sum product two three five seven eleven "
    "kubernetes ray serve replica pod node gpu cpu memory cache request stream scale "
    "operator deployment hello world yes no maybe compute check verify result final value "
    "equals plus minus times"
)
_WORDS = tuple(_WORD_TEXT.split())


def _training_text(seed: int, lines: int = 4000) -> list[str]:
    """Deterministic pseudo-text, including chat markup, to train the BPE merges on."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24)))
        nums = " ".join(str(rng.randint(0, 10_000)) for _ in range(rng.randint(0, 4)))
        if i % 3 == 0:
            out.append(
                f"<|im_start|>user\n{words} {nums}?<|im_end|>\n"
                f"<|im_start|>assistant\n<think>\n{words}\n</think>\n{nums}<|im_end|>\n"
            )
        else:
            out.append(f"{words.capitalize()}, {nums}. {words.upper()[:40]} ({nums}) {{}} [];:!")
    return out


def _build_tokenizer(dest: Path, seed: int) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(seed), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(dest))
    return len(fast)


def build_tiny_k2think(dest: Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2ForCausalLM + tokenizer + chat template to ``dest``; return it.

    Deterministic for a given ``seed``. Takes a few seconds and needs no network.
    """
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    n_tokens = _build_tokenizer(dest, seed)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(dest))
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    vocab_size = -(-n_tokens // 64) * 64  # round up, as real checkpoints pad their vocab

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_HIDDEN_LAYERS,
        num_attention_heads=NUM_ATTENTION_HEADS,
        num_key_value_heads=NUM_KEY_VALUE_HEADS,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        max_window_layers=NUM_HIDDEN_LAYERS,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
        architectures=["Qwen2ForCausalLM"],
    )
    assert config.hidden_size // config.num_attention_heads == 128

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(str(dest), safe_serialization=True)
    (dest / "k2think-tiny.json").write_text(
        json.dumps(
            {"builder": "e2e/dataplane/tiny_model.py", "seed": seed, "vocab_size": vocab_size},
            indent=2,
        )
        + "\n"
    )
    return dest


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-k2think")
    print(build_tiny_k2think(target))
