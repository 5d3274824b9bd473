"""Builds a tiny Llama-architecture model with its own tokenizer, offline, in seconds.

`python -m services.generation.tiny_model <dir>` writes a directory vLLM and transformers can
load: random weights from a fixed seed (its text is noise, its engine path is real) and a BPE
tokenizer trained on a built-in corpus, so generated text is printable.

The model has no end-of-sequence token on purpose: random weights would otherwise stop at
random, and callers (tests, benchmarks) rely on a generation running to exactly `max_tokens`.

The directory is written to a temporary sibling and renamed into place, so a half-built
directory never looks complete; `config.json` is the completion marker.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(".meshllm/models/tiny-llama")

SPECIAL_TOKENS = ["<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
UNK, BOS = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]

# Renders chat messages; a message ends with <|end|>, which is *not* an end-of-sequence token.
# Like many real templates (Llama 2, Mistral) it refuses a conversation whose roles do not
# alternate user/assistant after an optional leading system message, so the path that turns a
# template's refusal into INVALID_ARGUMENT is exercised on the default model.
CHAT_TEMPLATE = (
    "{% set offset = 1 if messages and messages[0]['role'] == 'system' else 0 %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and loop.index0 != 0 %}"
    "{{ raise_exception('a system message is only allowed first') }}"
    "{% elif message['role'] != 'system' and (message['role'] == 'user') != "
    "((loop.index0 - offset) % 2 == 0) %}"
    "{{ raise_exception('conversation roles must alternate user/assistant/user/... "
    "after an optional system message') }}"
    "{% endif %}"
    "{% endfor %}"
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Training text for the tokenizer: plain English, so merges are readable word pieces.
CORPUS = """\
The mesh serves language models as a set of small services behind a proxy.
Each request carries a deadline, a request id and a trace context from hop to hop.
A router picks the model pool, asks for moderation, may search for passages and then
streams tokens from a generation replica back to the client, one event at a time.
Replicas register with the control plane, send heartbeats and drain when they go away.
When no replica is running, the request waits while one starts, and the answer says so.
Small models make tests fast; their words are noise, but the path they take is real.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.
Rain falls on the river, the wind moves the trees, and the city lights come on at night.
Numbers count tokens: one two three four five six seven eight nine ten hundred thousand.
""" * 4


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model. vLLM's CPU attention needs head_dim >= 32."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    max_position_embeddings: int = 2048
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def build_tokenizer(vocab_size: int):
    """A deterministic BPE tokenizer over printable ASCII, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=["\n"] + [chr(c) for c in range(32, 127)],
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        bos_token=BOS,
        additional_special_tokens=SPECIAL_TOKENS[2:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=TinyModelSpec.max_position_embeddings,
    )


def build_model(spec: TinyModelSpec, vocab_size: int, bos_token_id: int):
    """Random Llama weights from a fixed seed; no eos/pad token ids anywhere."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=True,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos_token_id)
    return model


def build(target: Path, spec: TinyModelSpec = TinyModelSpec(), force: bool = False) -> Path:
    """Writes the model and tokenizer to `target` atomically; returns `target`.

    A complete directory (one with config.json) is kept unless `force`, which replaces it
    (the command line always does, so `make model` picks up changes to this file)."""
    target = Path(target)
    if (target / "config.json").exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = build_tokenizer(spec.vocab_size)
        tokenizer.save_pretrained(staging)
        model = build_model(spec, len(tokenizer), tokenizer.bos_token_id)
        model.save_pretrained(staging, safe_serialization=True)
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        _move_into_place(staging, target, replace=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _move_into_place(staging: Path, target: Path, replace: bool) -> None:
    if target.exists() and (replace or not (target / "config.json").exists()):
        # Renamed aside first, so the target is never a mix of two builds.
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.rename(target, retired / target.name)
        shutil.rmtree(retired)
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(staging)  # another process finished the same build first


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    print(build(args.directory, force=True))


if __name__ == "__main__":
    main()
