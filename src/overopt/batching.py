"""Runs of one lab trained together in one process: their sampling drawn as one batched computation (issue 28).

Where a run's time goes (benchmarks/run_profile.py): its updates' forward and backward passes are matrix
products that already run at this machine's float32 rate, but sampling a completion token by token is a long
chain of small operations whose fixed cost dominates. Runs that share a lab (methods × seeds × grid points)
share that cost here: each run of a group is a greenlet (a cooperative coroutine with its own call stack, in
one thread) running the ordinary `pipeline.run_job`, unchanged. When a run asks to sample from its policy,
it waits; once every run of the group is waiting, the hub draws all their samples at once with the runs'
policies stacked (models.stack.PolicyStack: one batched matrix product for K runs), and each run goes on with
its own. Nothing else is shared: a run's update, evaluation, logs and checkpoints are its own.

Each run keeps its own random streams: its torch RNG state and grad mode are saved when it waits and
restored when it goes on, and the noise of its samples comes from a generator seeded by its own RNG, as
`sampling.sample_completions` does alone. Requests are stacked only with requests of the same shapes, and
a stacked product computes each run's slice on its own, so a run's samples do not depend on which runs
share its batch: the same command gives the same numbers whatever the grouping, `--jobs` or launcher
(tests/test_batching.py). The stacked sampler equals sample_completions to float rounding (its logits
differ by ~1e-7), so `batch_runs` is a knob of its own: off, every run samples with transformers as before.

Only sampling from a plain float32 Llama policy (the lab's own models) is stacked; a LoRA or bfloat16 policy,
the SFT policy's samples outside a run, and several processes (accelerate) sample as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from greenlet import GreenletExit, greenlet
from transformers import PreTrainedModel

from overopt import distributed, sampling
from overopt.errors import Preempted
from overopt.models.stack import PolicyStack, stackable
from overopt.ops import entropy_from_logits, selective_log_softmax
from overopt.sampling import Rollout, SampledLogprobs, mask_after_eos

MAX_GROUP = 16  # runs stacked at most: beyond this the fixed cost per operation is no longer what dominates


@dataclass
class _Request:
    """One run's call of sample_completions, with the noise seed it drew from its own RNG."""

    model: PreTrainedModel
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    max_new_tokens: int
    temperature: float
    eos_id: int
    pad_id: int
    with_logprobs: bool
    noise_seed: int

    def key(self) -> tuple:
        """Requests that stack together: the same architecture and shapes (distinct prompts included)."""
        distinct = torch.unique(torch.cat([self.prompt_ids, self.prompt_mask], 1), dim=0).shape[0]
        return (self.model.config.to_json_string(), tuple(self.prompt_ids.shape), distinct, self.max_new_tokens,
                self.temperature, self.eos_id, self.pad_id, self.with_logprobs)  # fmt: skip


def _joined(messages: list[str]) -> str:
    """'SIGTERM received; checkpoint A written, checkpoint B written; rerun ...' from each run's own line."""
    head, _, _ = messages[0].partition("; ")
    tail = messages[0].rpartition("; ")[2]
    middles = [m.removeprefix(head + "; ").removesuffix("; " + tail) for m in messages]
    return "; ".join([head, ", ".join(middles), tail])


class RunGroup:
    """Runs trained together: `run(jobs)` runs each job in a greenlet and draws their samples stacked."""

    def __init__(self) -> None:
        self._jobs: set[greenlet] = set()
        self._stacks: dict[tuple[str, int], PolicyStack] = {}

    def run(self, jobs: list[Callable[[], None]]) -> None:
        """Run every job to its end. A job that fails ends the group with its error (the others stop where they
        are, as a failed run ends `--jobs`); a preempted job lets the others reach their own checkpoints first."""
        hub = greenlet.getcurrent()
        mine = (torch.get_rng_state(), torch.is_grad_enabled())
        states: dict[greenlet, tuple] = {}
        waiting: dict[greenlet, _Request] = {}
        errors: list[BaseException] = []

        def go_on(job: greenlet, *value) -> None:
            rng, grad = states.pop(job, mine)  # a job starts in the state the group started in
            torch.set_rng_state(rng)
            torch.set_grad_enabled(grad)
            try:
                request = job.switch(*value)  # the first switch starts the job, the next ones bring its samples
            except BaseException as error:  # noqa: BLE001 - the group ends with it (below)
                errors.append(error)
                request = None
            if not job.dead and request is not None:
                states[job] = (torch.get_rng_state(), torch.is_grad_enabled())
                waiting[job] = request

        lets = [greenlet(job, parent=hub) for job in jobs]
        self._jobs = set(lets)
        previous = sampling.set_router(self._route)
        try:
            for job in lets:
                go_on(job)
            while waiting and not any(not isinstance(e, Preempted) for e in errors):
                batch = dict(waiting)
                waiting.clear()
                for job, result in self._sample(batch).items():
                    go_on(job, result)
        finally:
            sampling.set_router(previous)
            for job in list(waiting):  # a failure ended the group: unwind the others (their locks, files)
                job.throw(GreenletExit)
            self._jobs = set()
            torch.set_rng_state(mine[0])
            torch.set_grad_enabled(mine[1])
        failures = [e for e in errors if not isinstance(e, Preempted)]
        if failures:
            raise failures[0]
        if errors:  # every run of the group wrote its checkpoint: one line names them all
            raise Preempted(_joined([str(e) for e in errors]))

    # ------------------------------------------------------------------------------------------------- #
    def _route(self, model, prompt_ids, prompt_mask, max_new_tokens, temperature, eos_id, pad_id, *, row_offset,
               total_rows, with_logprobs):  # fmt: skip
        """sampling.sample_completions' router: a job's request goes to the hub (None: sample as usual)."""
        rows = prompt_ids.shape[0]
        if greenlet.getcurrent() not in self._jobs or stackable(model) is not None or distributed.world() > 1:
            return None
        if row_offset != 0 or total_rows not in (None, rows):
            return None
        # The noise seed comes from the job's own RNG, as sample_completions draws it.
        seed = int(torch.randint(2**62, ()).item())
        request = _Request(model, prompt_ids.to(model.device), prompt_mask.to(model.device), max_new_tokens,
                           temperature, eos_id, pad_id, with_logprobs, seed)  # fmt: skip
        return greenlet.getcurrent().parent.switch(request)

    def _sample(self, batch: dict[greenlet, _Request]) -> dict[greenlet, object]:
        groups: dict[tuple, list[greenlet]] = {}
        for job, request in batch.items():
            groups.setdefault(request.key(), []).append(job)
        results = {}
        for jobs in groups.values():
            requests = [batch[job] for job in jobs]
            results.update(zip(jobs, self._decode(requests)))
        return results

    def _stack(self, model: PreTrainedModel, k: int) -> PolicyStack:
        key = (model.config.to_json_string(), k)
        if key not in self._stacks:
            self._stacks[key] = PolicyStack(model, k).to(model.device)
        return self._stacks[key]

    @torch.no_grad()
    def _decode(self, requests: list[_Request]) -> list:
        """sampling.sample_completions for K requests of one shape, with their policies stacked."""
        first = requests[0]
        k, (rows, width) = len(requests), first.prompt_ids.shape
        stack = self._stack(first.model, k)
        distinct, copies = [], []
        for slot, request in enumerate(requests):
            stack.load(slot, request.model)
            unique, inverse = torch.unique(torch.cat([request.prompt_ids, request.prompt_mask], 1), dim=0,
                                           return_inverse=True)  # fmt: skip
            distinct.append(unique)
            copies.append(inverse)
        distinct, copies = torch.stack(distinct), torch.stack(copies)
        logits, step = stack.decoder(distinct[..., :width], distinct[..., width:], copies, first.max_new_tokens)
        device, budget, temperature = stack.device, first.max_new_tokens, first.temperature
        noise = [torch.Generator(device=device).manual_seed(r.noise_seed) for r in requests]
        completion = torch.full((k, rows, budget), first.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(k, rows, budget, device=device) if first.with_logprobs else None
        entropy = torch.zeros(k, rows, budget, device=device) if first.with_logprobs else None
        ended = torch.zeros(k, rows, dtype=torch.bool, device=device)
        steps = [budget] * k
        for t in range(budget):
            if temperature > 0:
                vocab = logits.shape[-1]
                gumbel = torch.stack([-torch.empty((rows, vocab), device=device).exponential_(generator=g).log()
                                      for g in noise])  # fmt: skip
                scaled = logits.float() / temperature
                token = (scaled + gumbel).argmax(-1)
                if logprobs is not None:
                    flat = scaled.reshape(k * rows, 1, vocab)
                    logprobs[:, :, t] = selective_log_softmax(flat, token.reshape(k * rows, 1)).view(k, rows)
                    entropy[:, :, t] = entropy_from_logits(flat).view(k, rows)
            else:
                token = logits.argmax(-1)
            completion[:, :, t] = token
            newly = ~ended.all(1)
            ended |= token == first.eos_id
            for slot in torch.nonzero(newly & ended.all(1)).flatten().tolist():
                steps[slot] = t + 1  # the run's last row has ended: where sample_completions alone stops
            if t + 1 == budget or bool(ended.all()):
                break
            logits = step(token)
        out = []
        for slot, request in enumerate(requests):
            ids = completion[slot, :, : steps[slot]]
            mask = mask_after_eos(ids, first.eos_id)
            rollout = Rollout(request.prompt_ids, request.prompt_mask, ids.masked_fill(mask == 0, first.pad_id), mask)
            if logprobs is None:
                out.append(rollout)
            else:
                n = steps[slot]
                out.append((rollout, SampledLogprobs(logprobs[slot, :, :n] * mask, entropy[slot, :, :n] * mask)))
        return out
