"""Language-model participants (task language_model): Hugging Face causal LMs and their tokenizer.

    path/to/model_dir            AutoModelForCausalLM.from_pretrained (config.json and weights; offline)
    path/to/model.gguf           the same from a GGUF file, dequantised (transformers with `gguf`)
    package:name/file.gguf       a file inside an installed Python package (text.resolve)
    pkg.module:factory           factory(**model_args) returns the model (a causal LM, or any module whose
                                 output is the logits [B, T, V] or has them as `.logits`)

`weights: pretrained` (the default) keeps the source's weights; `none` builds the same architecture from
its config with fresh, seeded weights (the tests' tiny models). `model_args.layers: k` keeps the first k
decoder layers: a smaller model cut from the source. Every participant's tokenizer (`tokenizer`, default
its model's source) must equal the data's (data.text.tokenizer): checked before anything trains.
transformers is imported on first use (`pip install kt_swarm[lm]`).
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kt_swarm.config import is_import_path
from kt_swarm.errors import UserError, first_line
from kt_swarm.models import import_factory
from kt_swarm.text import fingerprint, resolve


class CausalLM(nn.Module):
    """A participant's language model: token ids [B, T] -> next-token logits [B, T, V]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=False) if _is_hf(self.model) else self.model(input_ids)
        return getattr(out, "logits", out)


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "generation_config")


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at run time: a missing file is an error, not a download
    try:
        import transformers
    except ImportError:
        raise UserError("task language_model needs transformers: pip install 'kt_swarm[lm]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _where(source: str, who: str) -> tuple[Path, dict]:
    """(directory, from_pretrained's extra arguments) of a model directory or a GGUF file."""
    path = Path(resolve(source, who))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{who}: GGUF file '{source}' does not exist")
        return path.parent, {"gguf_file": path.name}
    if not path.is_dir():
        raise UserError(f"{who}: '{source}' is not a model directory, a .gguf file or pkg.module:factory")
    return path, {}


def load_tokenizer(source: str, who: str):
    """The tokenizer of a model directory or GGUF file, offline."""
    directory, extra = _where(source, who)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # GGUF conversion chatters
            return _transformers().AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **extra)
    except UserError:
        raise
    except Exception as e:  # a directory without tokenizer files, a broken GGUF
        raise UserError(f"{who}: cannot load a tokenizer from '{source}': {first_line(e)}") from None


def check_tokenizers(sources: dict[str, str], data_tokenizer, data_source: str) -> None:
    """Every participant (name -> its tokenizer's source) must cut text as the data's tokenizer (loaded from
    `data_source`, not loaded again) did."""
    want = fingerprint(data_tokenizer)
    seen = {data_source: want}
    for name, source in sources.items():
        if source not in seen:
            seen[source] = fingerprint(load_tokenizer(source, f"participant '{name}'"))
        if seen[source] != want:
            raise UserError(f"participant '{name}': its tokenizer ({source}) differs from the data's (vocabulary or "
                            f"special tokens); every participant must share one tokenizer")


def create_causal_lm(source: str, model_args: dict, weights: str, seed: int, who: str) -> nn.Module:
    """One participant's causal LM (seeded where its weights are fresh), wrapped as CausalLM."""
    args = dict(model_args)
    layers = args.pop("layers", None)
    torch.manual_seed(seed)
    if is_import_path(source):
        try:
            model = import_factory(source, who)(**args)
        except UserError:
            raise
        except Exception as e:  # the user's factory
            raise UserError(f"{who}: model '{source}' failed to build: {first_line(e)}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"{who}: '{source}' did not return a torch.nn.Module")
    else:
        t = _transformers()
        directory, extra = _where(source, who)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                if weights == "none":
                    config = t.AutoConfig.from_pretrained(str(directory), local_files_only=True, **extra, **args)
                    model = t.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
                else:
                    model = t.AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True,
                                                                   torch_dtype=torch.float32, **extra, **args)
        except Exception as e:  # missing files, unknown architectures, bad model_args
            raise UserError(f"{who}: cannot load the causal LM '{source}': {first_line(e)}") from None
    if layers is not None:
        cut(model, int(layers), who)
    return CausalLM(model)


def cut(model: nn.Module, layers: int, who: str) -> None:
    """Keep a decoder's first `layers` layers (Llama-style models: model.model.layers)."""
    stack = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(stack, nn.ModuleList):
        raise UserError(f"{who}: model_args.layers cuts a decoder's layers, but this model has no model.layers")
    if not 1 <= layers <= len(stack):
        raise UserError(f"{who}: model_args.layers {layers}: the model has {len(stack)} layers")
    del stack[layers:]
    if hasattr(model.config, "num_hidden_layers"):
        model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]


def context_length(model: nn.Module) -> int | None:
    """How many positions the model attends over, where its config says."""
    inner = getattr(model, "model", model)
    return getattr(getattr(inner, "config", None), "max_position_embeddings", None)


@dataclass
class TokenInput:
    """A language model's preprocessing: the block's token ids, on its device."""

    dtype: torch.dtype  # the precision its outputs are returned in (the engine's dtype)

    def __call__(self, tokens: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        return tokens.to(device=device, dtype=torch.long)
