"""K copies of one Llama causal LM with stacked weights, for drawing K runs' samples as one computation (issue 28).

The lab's policies are tiny (≈100 k parameters, completions of ≤ 12 tokens), so sampling a completion token by
token costs the fixed price of each tensor operation, not arithmetic. K runs whose policies share an
architecture share every operation here instead: their weights are stacked along a leading dimension (K, ...)
and each matrix product is one batched product (K, rows, in) @ (K, in, out). `PolicyStack` runs the Llama
forward pass of transformers' `LlamaForCausalLM` on them: RMSNorm in float32, rotary embeddings with the
model's θ, causal attention over left-padded rows through `scaled_dot_product_attention`, the SiLU-gated MLP,
tied or untied output head. On each slice it equals the transformers model to float rounding
(tests/test_batching.py). Only sampling uses it (overopt.batching): the updates stay each run's own, since a
stacked forward and backward measured no faster here (the update's matrix products already run at the
machine's float32 rate; docs in benchmarks/RESULTS.md, "Where a run's time goes").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedModel

from overopt.models.policy import position_ids_from_mask


def stackable(model: PreTrainedModel) -> str | None:
    """Why `model` cannot be stacked (None when it can): the architecture this module implements."""
    config = model.config
    if not isinstance(model, LlamaForCausalLM) or getattr(model, "peft_config", None) is not None:
        return f"{type(model).__name__} is not a plain LlamaForCausalLM"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope != "default" or config.attention_bias or config.mlp_bias or config.hidden_act != "silu":
        return "only the default rotary embedding, no biases and a SiLU MLP are implemented"
    if next(model.parameters()).dtype != torch.float32:
        return "float32 weights only"
    return None


class PolicyStack(torch.nn.Module):
    """K Llama causal LMs of one architecture with stacked weights (K, ...), started as copies of `model`."""

    def __init__(self, model: LlamaForCausalLM, k: int):
        super().__init__()
        reason = stackable(model)
        if reason is not None:
            raise ValueError(f"cannot stack this policy: {reason}")
        if k < 1:
            raise ValueError(f"a stack needs at least one model, got k={k}")
        self.k, self.config = k, model.config
        # Parameters by their transformers name; a tied output head is the embedding (named once).
        self.names = [name for name, _ in model.named_parameters()]
        self.stacked = torch.nn.ParameterList(
            torch.nn.Parameter(p.detach().unsqueeze(0).repeat(k, *[1] * p.dim()).clone())
            for _, p in model.named_parameters()
        )
        self._index = {name: i for i, name in enumerate(self.names)}
        c = self.config
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        base = c.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def weight(self, name: str) -> torch.Tensor:
        return self.stacked[self._index[name]]

    @property
    def device(self) -> torch.device:
        return self.stacked[0].device

    # ----------------------------------------------------------------------------------------------- #
    # the forward pass, (K, B, L) tokens -> (K, B, L', V) logits
    # ----------------------------------------------------------------------------------------------- #
    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """(K, ..., in) @ weight(K, out, in)ᵀ -> (K, ..., out): each run's own nn.Linear (no bias)."""
        w = self.weight(name)
        shape = x.shape
        return torch.bmm(x.reshape(self.k, -1, shape[-1]), w.transpose(1, 2)).view(*shape[:-1], w.shape[1])

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """LlamaRMSNorm: x / sqrt(mean x² + ε) in float32, times each run's weight."""
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        w = self.weight(name)
        return w.view(self.k, *[1] * (x.dim() - 2), w.shape[-1]) * h.to(dtype)

    def _rotary(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of the rotary embedding at (K·B, L) positions -> (K·B, 1, L, head_dim) each."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _attention(self, x, layer, cos, sin, mask, cache, position) -> torch.Tensor:
        """One attention block on (K, B, L, H): rows flattened to K·B for scaled_dot_product_attention."""
        k, b, length, _ = x.shape
        prefix = f"model.layers.{layer}.self_attn."

        def heads(name, n):
            return self._linear(x, prefix + name).view(k * b, length, n, self.head_dim).transpose(1, 2)

        q = self._rotate(heads("q_proj.weight", self.heads), cos, sin)
        key = self._rotate(heads("k_proj.weight", self.kv_heads), cos, sin)
        value = heads("v_proj.weight", self.kv_heads)
        if cache is not None:  # keys and values of the earlier positions, filled up to `position`
            keys, values = cache[layer]
            keys[:, :, position : position + length], values[:, :, position : position + length] = key, value
            key, value = keys[:, :, : position + length], values[:, :, : position + length]
        if self.kv_heads != self.heads:
            repeat = self.heads // self.kv_heads
            key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=self.head_dim**-0.5)
        out = out.transpose(1, 2).reshape(k, b, length, self.heads * self.head_dim)
        return self._linear(out, prefix + "o_proj.weight")

    def _mlp(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        prefix = f"model.layers.{layer}.mlp."
        gate, up = self._linear(x, prefix + "gate_proj.weight"), self._linear(x, prefix + "up_proj.weight")
        return self._linear(F.silu(gate) * up, prefix + "down_proj.weight")

    def _layers(self, h, positions, mask, cache=None, position=0) -> torch.Tensor:
        k, b, length, _ = h.shape
        cos, sin = self._rotary(positions.reshape(k * b, length), h.dtype)
        for layer in range(self.config.num_hidden_layers):
            prefix = f"model.layers.{layer}."
            h = h + self._attention(self._norm(h, prefix + "input_layernorm.weight"), layer, cos, sin, mask, cache,
                                    position)  # fmt: skip
            h = h + self._mlp(self._norm(h, prefix + "post_attention_layernorm.weight"), layer)
        return self._norm(h, "model.norm.weight")

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.weight("model.embed_tokens.weight")  # (K, V, H)
        runs = torch.arange(self.k, device=ids.device).view(self.k, *[1] * (ids.dim() - 1))
        return table[runs, ids]

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        head = "lm_head.weight" if "lm_head.weight" in self._index else "model.embed_tokens.weight"
        return self._linear(h, head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        """Logits of K runs on their own rows: input_ids and attention_mask (K, B, L), left-padded (positions skip
        the padding, as `position_ids_from_mask` gives them); the last `logits_to_keep` positions (0: all).

        A padding query attends to itself only (its output is never read), so no row of the attention is
        empty and nothing is NaN. Returns (K, B, L', V) in the weights' dtype."""
        k, b, length = input_ids.shape
        positions = position_ids_from_mask(attention_mask)
        keys = attention_mask.bool().reshape(k * b, 1, 1, length)
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=input_ids.device)
        mask = (causal & keys) | eye  # (K·B, 1, L, L)
        h = self._layers(self._embed(input_ids), positions, mask)
        return self._logits(h[:, :, -logits_to_keep:] if logits_to_keep else h)

    # ----------------------------------------------------------------------------------------------- #
    # incremental decoding for the sampler
    # ----------------------------------------------------------------------------------------------- #
    @torch.no_grad()
    def decoder(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, copies: torch.Tensor, max_new_tokens: int):
        """A decoding session: each run's distinct left-padded prompts (K, D, P) run once, and `copies` (K, B) says
        which of its distinct prompts each of a run's B rows continues (a group of K copies shares its prefill).
        Returns the rows' last-position logits (K, B, V) and `step(tokens (K, B)) -> logits (K, B, V)`, which
        appends one token to every row (rows that ended go on, unread: every run keeps its shapes, so a run's
        numbers never depend on the runs beside it)."""
        k, distinct, length = prompt_ids.shape
        b = copies.shape[1]
        total = length + max_new_tokens
        dtype = self.stacked[0].dtype
        # Prefill on the distinct prompts, its keys and values then copied to every row that continues them.
        prefill = [(torch.zeros(k * distinct, self.kv_heads, length, self.head_dim, dtype=dtype, device=self.device),
                    torch.zeros(k * distinct, self.kv_heads, length, self.head_dim, dtype=dtype, device=self.device))
                   for _ in range(self.config.num_hidden_layers)]  # fmt: skip
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        mask = (causal & prompt_mask.reshape(k * distinct, 1, 1, length).bool()) | torch.eye(
            length, dtype=torch.bool, device=self.device)  # fmt: skip
        h = self._layers(self._embed(prompt_ids), position_ids_from_mask(prompt_mask), mask, prefill, 0)
        rows = (copies + distinct * torch.arange(k, device=self.device)[:, None]).reshape(-1)  # (K·B,) into K·D
        cache = []
        for keys_, values_ in prefill:
            full = [torch.zeros(k * b, self.kv_heads, total, self.head_dim, dtype=dtype, device=self.device)
                    for _ in range(2)]  # fmt: skip
            full[0][:, :, :length], full[1][:, :, :length] = keys_[rows], values_[rows]
            cache.append(tuple(full))
        row_mask = prompt_mask.reshape(k * distinct, length)[rows]  # (K·B, P)
        keys = torch.zeros(k * b, total, dtype=torch.bool, device=self.device)
        keys[:, :length] = row_mask.bool()
        state = {"position": length, "next": row_mask.sum(-1).view(k, b, 1)}  # each row's next position

        def step(tokens: torch.Tensor) -> torch.Tensor:
            at = state["position"]
            keys[:, at] = True
            h = self._layers(self._embed(tokens[..., None]), state["next"], keys[:, None, None, : at + 1], cache, at)
            state["position"], state["next"] = at + 1, state["next"] + 1
            return self._logits(h)[:, :, -1]

        last = self._logits(h[:, :, -1:])[:, :, -1]  # (K, D, V)
        return last.reshape(k * distinct, -1)[rows].view(k, b, -1), step

    @torch.no_grad()
    def load(self, slot: int, model: PreTrainedModel) -> None:
        """Copy `model`'s weights (the architecture of the stack's template) into run slot `slot`."""
        params = dict(model.named_parameters())
        for name, stacked in zip(self.names, self.stacked):
            stacked[slot].copy_(params[name])
