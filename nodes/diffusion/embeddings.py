"""Textual-inversion embeddings in prompts: ``embedding:name`` (ComfyUI's syntax), files in models/embeddings/.

A prompt word ``embedding:NAME`` (the extension may be left out; ``,`` ``(`` ``)`` end the name) is replaced by
the embedding's vectors, one token position per vector, exactly where diffusers' ``load_textual_inversion``
puts the tokens it adds: the text around it is tokenized piece by piece, the vectors take the places of the
added tokens (:mod:`.prompt` does the tokenizing; inside ``(embedding:NAME:1.2)`` the vectors get the weight).
File formats, all read without unpickling:

- A1111 ``.pt`` (``{"string_to_param": {"*": [n, dim]}}``) through ``torch.load(weights_only=True)``;
- ``.safetensors`` with ``emb_params`` (A1111 converted), a single tensor (diffusers' ``learned_embeds``), or
  SDXL's ``clip_l`` / ``clip_g`` pair (``clip_l`` goes to the first text encoder, ``clip_g`` to the second).

The vectors enter the text encoder through a forward hook on its token embedding that lives only for one
encoder call (removed in ``finally``), so the shared loaded encoder is unchanged before and after.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth")
_PATTERN = re.compile(r"embedding:([^\s,()]+)")


class EmbeddingError(ValueError):
    pass


@dataclass(frozen=True)
class EmbeddingRef:
    name: str


def split_prompt(text: str) -> list[str | EmbeddingRef]:
    """Text pieces and embedding references in prompt order (a trailing ``.`` or ``:`` is not part of a name)."""
    parts: list[str | EmbeddingRef] = []
    pos = 0
    for match in _PATTERN.finditer(text):
        name = match.group(1).rstrip(".:")
        end = match.start(1) + len(name)
        parts.append(text[pos:match.start()])
        parts.append(EmbeddingRef(name))
        pos = end
    parts.append(text[pos:])
    return [p for p in parts if not (isinstance(p, str) and p == "")]


def find_embedding(folder: Path, name: str) -> Path:
    root = folder.resolve()
    for candidate in [name] + [name + suffix for suffix in EMBEDDING_SUFFIXES]:
        path = (root / candidate).resolve()
        if root in path.parents and path.is_file():
            return path
    available = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES) if root.is_dir() else []
    hint = ""
    stem, _, weight = name.rpartition(":")
    if stem and weight.replace(".", "", 1).isdigit():
        hint = f"; to weight an embedding write (embedding:{stem}:{weight})"
    raise EmbeddingError(f"text: no embedding named {name!r} in {root} (available: "
                         f"{', '.join(available[:20]) or 'none'}){hint}")


def load_embedding(path: Path) -> dict[str, torch.Tensor]:
    """{key: [n, dim]} with key ``clip_l`` / ``clip_g`` for SDXL files, ``*`` for single-encoder files."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path))
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a pickle with code in it, or not a torch file at all
            raise EmbeddingError(f"text: {path.name} could not be read as a weights-only torch file ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = {"*": next(iter(data["string_to_param"].values()))}
    if not isinstance(data, dict):
        raise EmbeddingError(f"text: {path.name} is not a textual-inversion embedding file")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if "clip_l" in tensors or "clip_g" in tensors:
        out = {k: tensors[k] for k in ("clip_l", "clip_g") if k in tensors}
    elif "emb_params" in tensors:
        out = {"*": tensors["emb_params"]}
    elif len(tensors) == 1:
        out = {"*": next(iter(tensors.values()))}
    else:
        raise EmbeddingError(f"text: {path.name} holds no embedding vectors (keys: {', '.join(list(data)[:8])})")
    return {k: (v[None] if v.ndim == 1 else v).float() for k, v in out.items()}


def vectors_for(embedding: dict[str, torch.Tensor], encoder_index: int, n_encoders: int, width: int,
                name: str) -> torch.Tensor:
    """The vectors of one embedding for one text encoder (SDXL: clip_l → first, clip_g → second)."""
    key = ("clip_l", "clip_g")[encoder_index] if n_encoders == 2 else "clip_l"
    vectors = embedding.get(key, embedding.get("*"))
    if vectors is None and n_encoders == 1:
        vectors = embedding.get("clip_l")
    if vectors is None or vectors.shape[-1] != width:
        have = ", ".join(f"{k} ({v.shape[-1]} wide)" for k, v in embedding.items())
        raise EmbeddingError(f"text: embedding {name!r} has {have}, but the text encoder needs {width}-wide "
                             "vectors; it was made for another base model")
    return vectors


@contextmanager
def injected(encoder, inject: dict[int, torch.Tensor]):
    """Replace the token embedding output at the given positions for the calls inside the block."""
    if not inject:
        yield
        return
    module = encoder.get_input_embeddings()

    def hook(_module, _args, output):
        output = output.clone()
        for pos, vec in inject.items():
            output[:, pos] = vec.to(device=output.device, dtype=output.dtype)
        return output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
